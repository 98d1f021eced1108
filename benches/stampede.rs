//! 1,000 concurrent requests for one cold user: how many database loads they make (must
//! be 1) and the wall time until all have their keys, beside 1,000 concurrent requests
//! for a user already cached.
//!
//! Run: `cargo bench --bench stampede`. The load count of every iteration is checked; the
//! total is printed at the end.

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tower_byok::{Keyring, MasterKey, Vault};

#[path = "../tests/common/mod.rs"]
mod common;
use common::{Backend, Opts, TestDb};

async fn thousand(vault: &Vault) {
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let vault = vault.clone();
            tokio::spawn(async move { vault.keys_for("stampede").await.expect("keys").len() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), 3);
    }
}

fn stampede(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // A real SQLite file through the test suite's probed store, which counts user loads.
    let db = rt.block_on(TestDb::new(Backend::Sqlite));
    let (vault, probe) = rt.block_on(async {
        let (vault, probe) = db
            .open_probed(
                Keyring::new(MasterKey::generate("k1").expect("key")),
                Opts::default(),
            )
            .await;
        for provider in ["openai", "gemini", "exa"] {
            vault
                .put("stampede", provider, "secret-0123456789abcdef")
                .await
                .expect("put");
        }
        (vault, probe)
    });

    let mut group = c.benchmark_group("stampede");
    group.sample_size(30);
    let mut iterations = 0;
    let mut total_loads = 0;
    group.bench_function("cold_1000", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                vault.forget_cached("stampede");
                let before = probe.loads();
                let started = Instant::now();
                rt.block_on(thousand(&vault));
                spent += started.elapsed();
                let made = probe.loads() - before;
                assert_eq!(made, 1, "1000 concurrent cold requests made {made} loads");
                iterations += 1;
                total_loads += made;
            }
            spent
        })
    });
    group.bench_function("warm_1000", |b| b.iter(|| rt.block_on(thousand(&vault))));
    group.finish();
    eprintln!("stampede: {iterations} cold iterations of 1000 concurrent requests made {total_loads} database loads");
}

criterion_group!(benches, stampede);
criterion_main!(benches);
