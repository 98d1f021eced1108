//! 1,000 concurrent requests for one cold user: how many database loads they make (must
//! be 1) and the wall time until all have their keys, beside 1,000 concurrent requests
//! for a user already cached.
//!
//! Run: `cargo bench --bench stampede`. The load count of every iteration is checked; the
//! total is printed at the end.

// `criterion_group!` expands to an undocumented `pub fn`.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tower_byok::store::StoredKey;
use tower_byok::{AuditAction, AuditRecord, KeyStore, Keyring, MasterKey, SqliteStore, Vault};

/// A real SQLite store that counts user loads.
struct Counting {
    inner: SqliteStore,
    loads: Arc<AtomicUsize>,
}

impl KeyStore for Counting {
    async fn migrate(&self) -> tower_byok::Result<()> {
        self.inner.migrate().await
    }
    async fn fetch_user(&self, user_id: &str) -> tower_byok::Result<Vec<StoredKey>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.fetch_user(user_id).await
    }
    async fn fetch_key(
        &self,
        user_id: &str,
        provider: &str,
    ) -> tower_byok::Result<Option<StoredKey>> {
        self.inner.fetch_key(user_id, provider).await
    }
    async fn upsert(
        &self,
        row: &StoredKey,
        audit: &AuditRecord,
    ) -> tower_byok::Result<AuditAction> {
        self.inner.upsert(row, audit).await
    }
    async fn delete(
        &self,
        user_id: &str,
        provider: Option<&str>,
        audit: &AuditRecord,
    ) -> tower_byok::Result<Vec<String>> {
        self.inner.delete(user_id, provider, audit).await
    }
    async fn check_records(&self) -> tower_byok::Result<Vec<(String, Vec<u8>)>> {
        self.inner.check_records().await
    }
    async fn add_check_records(
        &self,
        records: &[(&str, Vec<u8>)],
        at: i64,
        only_if_none: bool,
    ) -> tower_byok::Result<usize> {
        self.inner
            .add_check_records(records, at, only_if_none)
            .await
    }
    async fn remove_check_record(&self, key_id: &str) -> tower_byok::Result<bool> {
        self.inner.remove_check_record(key_id).await
    }
    async fn audit_trail(
        &self,
        query: &tower_byok::AuditQuery,
    ) -> tower_byok::Result<Vec<tower_byok::AuditRecord>> {
        self.inner.audit_trail(query).await
    }
    async fn keys_page(
        &self,
        after: Option<(&str, &str)>,
        limit: u32,
        exclude_key_id: Option<&str>,
    ) -> tower_byok::Result<Vec<tower_byok::store::StoredKey>> {
        self.inner.keys_page(after, limit, exclude_key_id).await
    }
    async fn reseal(
        &self,
        old: &tower_byok::store::StoredKey,
        key_id: &str,
        sealed: &[u8],
        audit: &tower_byok::AuditRecord,
    ) -> tower_byok::Result<bool> {
        self.inner.reseal(old, key_id, sealed, audit).await
    }
    async fn key_usage(&self) -> tower_byok::Result<Vec<(String, i64)>> {
        self.inner.key_usage().await
    }
    async fn set_expiry(
        &self,
        user_id: &str,
        provider: &str,
        expires_at: Option<i64>,
        audit: &tower_byok::AuditRecord,
    ) -> tower_byok::Result<bool> {
        self.inner
            .set_expiry(user_id, provider, expires_at, audit)
            .await
    }
    async fn expired_keys(
        &self,
        now: i64,
        limit: u32,
    ) -> tower_byok::Result<Vec<(String, String)>> {
        self.inner.expired_keys(now, limit).await
    }
    async fn delete_expired(
        &self,
        user_id: &str,
        provider: &str,
        now: i64,
        audit: &tower_byok::AuditRecord,
    ) -> tower_byok::Result<bool> {
        self.inner
            .delete_expired(user_id, provider, now, audit)
            .await
    }
}

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
    let dir = tempfile::tempdir().expect("tempdir");
    let loads = Arc::new(AtomicUsize::new(0));
    let vault = rt.block_on(async {
        let store = Counting {
            inner: SqliteStore::open(dir.path().join("stampede.db"))
                .await
                .expect("store"),
            loads: loads.clone(),
        };
        let vault = Vault::open(store, Keyring::new(MasterKey::generate("k1").expect("key")))
            .await
            .expect("vault");
        for provider in ["openai", "gemini", "exa"] {
            vault
                .put("stampede", provider, "secret-0123456789abcdef")
                .await
                .expect("put");
        }
        vault
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
                let before = loads.load(Ordering::SeqCst);
                let started = Instant::now();
                rt.block_on(thousand(&vault));
                spent += started.elapsed();
                let made = loads.load(Ordering::SeqCst) - before;
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
