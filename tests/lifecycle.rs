//! Key lifecycle on real databases: master-key rotation, rewrap, verify, retire,
//! expiring keys, and the audit trail. Every test runs on SQLite and on PostgreSQL.
#![cfg(all(feature = "sqlite", feature = "axum"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{master, Backend, Opts, TestDb};
use tower_byok::{AuditAction, ErrorKind, Keyring, Vault};

per_backend!(
    rotation_matrix_behaves_as_documented,
    a_rewrap_killed_midway_continues_when_run_again,
    rewrap_under_concurrent_reads_through_the_layer,
    verify_reports_rows_that_do_not_open,
    retiring_a_key_still_in_use_is_refused,
    expiry_can_be_extended_cleared_and_purged,
    every_change_is_audited_without_secrets_or_user_ids,
    a_failed_audit_write_undoes_the_change,
    checks_run_before_anything_is_written,
);

// The same tests through PgBouncer, in transaction and in session mode.
crate::behind_poolers!(
    rotation_matrix_behaves_as_documented,
    a_rewrap_killed_midway_continues_when_run_again,
    rewrap_under_concurrent_reads_through_the_layer,
    verify_reports_rows_that_do_not_open,
    retiring_a_key_still_in_use_is_refused,
    expiry_can_be_extended_cleared_and_purged,
    every_change_is_audited_without_secrets_or_user_ids,
    a_failed_audit_write_undoes_the_change,
    checks_run_before_anything_is_written,
);

async fn checks_run_before_anything_is_written(backend: Backend) {
    use tower_byok::check;
    let db = TestDb::new(backend).await;
    db.open(old()).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let vault = db
        .open_checked(old(), move |b| {
            let seen = seen.clone();
            b.check("openai", check::openai()).check(
                "acme",
                check::live(move |key: String| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if key == "acme-good-key" {
                            Ok(())
                        } else {
                            Err("the provider refused the key")
                        }
                    }
                }),
            )
        })
        .await;
    for (provider, key, kind) in [
        ("openai", "sk-PLANTED bad key", ErrorKind::InvalidSecret),
        (
            "OpenAI",
            "not-openai-PLANTED-0123456789",
            ErrorKind::InvalidSecret,
        ),
        ("acme", "acme-PLANTED-bad", ErrorKind::KeyRejected),
    ] {
        let err = vault.put("u", provider, key).await.unwrap_err();
        assert_eq!(err.kind(), kind);
        assert!(!format!("{err} {err:?}").contains("PLANTED"), "{err}");
    }
    assert!(vault.list("u").await.unwrap().is_empty());
    assert!(vault.audit_trail("u").await.unwrap().is_empty());
    vault
        .put("u", "openai", "sk-proj-0123456789abcdefghij")
        .await
        .unwrap();
    vault.put("u", "acme", "acme-good-key").await.unwrap();
    vault
        .put("u", "exa", "anything goes without a check")
        .await
        .unwrap();
    assert_eq!(vault.list("u").await.unwrap().len(), 3);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the live check ran once per acme put"
    );
}

fn old() -> Keyring {
    Keyring::new(master("old", 1))
}
fn both_old_active() -> Keyring {
    Keyring::new(master("old", 1))
        .with_key(master("new", 2))
        .unwrap()
}
fn both_new_active() -> Keyring {
    Keyring::new(master("new", 2))
        .with_key(master("old", 1))
        .unwrap()
}
fn new() -> Keyring {
    Keyring::new(master("new", 2))
}

async fn key_ids(vault: &Vault, user: &str) -> BTreeMap<String, String> {
    vault
        .list(user)
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.provider, k.master_key_id))
        .collect()
}

async fn rotation_matrix_behaves_as_documented(backend: Backend) {
    // (rows sealed under, keyring at open, its name, opens?)
    type Cell = (&'static str, fn() -> Keyring, &'static str, bool);
    let cells: [Cell; 8] = [
        ("old", old, "old only", true),
        ("old", both_old_active, "both, old active", true),
        ("old", both_new_active, "both, new active", true),
        ("old", new, "new only", false),
        ("new", old, "old only", false),
        ("new", both_old_active, "both, old active", true),
        ("new", both_new_active, "both, new active", true),
        ("new", new, "new only", true),
    ];
    for (rows_under, ring, name, opens) in cells {
        let db = TestDb::new(backend).await;
        let writer = if rows_under == "old" {
            old()
        } else {
            both_new_active()
        };
        db.open(writer)
            .await
            .unwrap()
            .put("u", "openai", "sk-stored")
            .await
            .unwrap();

        let keyring = ring();
        let active = keyring.active().id().to_owned();
        match db.open(keyring).await {
            Ok(vault) => {
                assert!(
                    opens,
                    "rows under {rows_under}, keyring {name}: opened, expected refusal"
                );
                // Old rows still open; new writes go under the active key.
                assert_eq!(
                    vault
                        .get("u", "openai")
                        .await
                        .unwrap()
                        .unwrap()
                        .expose_secret(),
                    "sk-stored"
                );
                vault.put("u", "exa", "exa-new").await.unwrap();
                let ids = key_ids(&vault, "u").await;
                assert_eq!(ids["openai"], rows_under, "{name}");
                assert_eq!(ids["exa"], active, "{name}");
            }
            Err(e) => {
                assert!(
                    !opens,
                    "rows under {rows_under}, keyring {name}: refused: {e}"
                );
                assert_eq!(e.kind(), ErrorKind::WrongMasterKey, "{name}");
            }
        }
    }
}

async fn seed(vault: &Vault, users: usize) -> BTreeMap<(String, String), String> {
    let mut expected = BTreeMap::new();
    for i in 0..users {
        for provider in ["openai", "exa"] {
            let user = format!("user-{i:03}");
            let secret = format!("{provider}-secret-of-{user}");
            vault.put(&user, provider, &secret).await.unwrap();
            expected.insert((user, provider.to_owned()), secret);
        }
    }
    expected
}

async fn all_keys(vault: &Vault, expected: &BTreeMap<(String, String), String>) -> usize {
    let mut right = 0;
    for ((user, provider), secret) in expected {
        let got = vault.get(user, provider).await.unwrap().unwrap();
        right += usize::from(got.expose_secret() == secret);
    }
    right
}

async fn a_rewrap_killed_midway_continues_when_run_again(backend: Backend) {
    let db = TestDb::new(backend).await;
    let expected = seed(&db.open(old()).await.unwrap(), 150).await;
    let vault = db.open(both_new_active()).await.unwrap();

    // Start a rewrap in 20-row batches and kill it after its third batch.
    let (batches_tx, mut batches) = tokio::sync::mpsc::unbounded_channel();
    let running = {
        let vault = vault.clone();
        tokio::spawn(async move {
            vault
                .rewrap(20, move |p| {
                    let _ = batches_tx.send(p.done);
                })
                .await
        })
    };
    for _ in 0..3 {
        batches.recv().await.unwrap();
    }
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    let usage = vault.master_key_usage().await.unwrap();
    let under_old = usage
        .iter()
        .find(|u| u.master_key_id == "old")
        .map_or(0, |u| u.rows);
    assert!(
        under_old > 0 && under_old < 300,
        "killed mid-way: {under_old} rows left under old"
    );

    // Run again: it picks up the rest, and every key opens, none lost or changed.
    let report = vault.rewrap(20, |_| {}).await.unwrap();
    // The one re-seal in flight when the task was killed still completes on its own
    // (writes run to their end), so the rerun finds the rest, or one row fewer.
    assert!(
        report.resealed == under_old || report.resealed + 1 == under_old,
        "resealed {} of the {under_old} left",
        report.resealed
    );
    assert!(report.failed.is_empty());
    let verify = vault.verify(|_| {}).await.unwrap();
    assert!(verify.is_ok(), "{verify}");
    assert_eq!(verify.opened, 300);
    assert_eq!(
        vault
            .master_key_usage()
            .await
            .unwrap()
            .iter()
            .map(|u| u.master_key_id.as_str())
            .collect::<Vec<_>>(),
        ["new"]
    );
    assert_eq!(
        all_keys(&db.open(new()).await.unwrap(), &expected).await,
        300
    );
}

async fn rewrap_under_concurrent_reads_through_the_layer(backend: Backend) {
    use axum::routing::get;
    use tower_byok::resolve::FromHeader;
    use tower_byok::{ByokLayer, UserKeys};

    let db = TestDb::new(backend).await;
    let expected = Arc::new(seed(&db.open(old()).await.unwrap(), 60).await);
    // A tiny TTL so that reads keep going to the database while rows are re-sealed.
    let opts = Opts {
        cache_ttl: Duration::from_millis(2),
        ..Opts::default()
    };
    let vault = db.open_with(both_new_active(), opts).await.unwrap();
    let app = axum::Router::new()
        .route(
            "/k",
            get(|keys: UserKeys| async move {
                keys.iter()
                    .map(|k| format!("{}={}", k.provider(), k.expose_secret()))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        )
        .layer(ByokLayer::new(vault.clone(), FromHeader::new("x-user")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (requests, wrong) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (stop, requests, wrong, expected) = (
                stop.clone(),
                requests.clone(),
                wrong.clone(),
                expected.clone(),
            );
            tokio::spawn(async move {
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http::<http_body_util::Full<bytes::Bytes>>();
                let mut i = r;
                while !stop.load(Ordering::SeqCst) {
                    let user = format!("user-{:03}", i % 60);
                    let req = http::Request::get(format!("http://{addr}/k"))
                        .header("x-user", &user)
                        .body(Default::default())
                        .unwrap();
                    let res = client.request(req).await.unwrap();
                    let ok = res.status() == http::StatusCode::OK;
                    let body = http_body_util::BodyExt::collect(res.into_body())
                        .await
                        .unwrap()
                        .to_bytes();
                    let want = format!(
                        "exa={},openai={}",
                        expected[&(user.clone(), "exa".to_owned())],
                        expected[&(user, "openai".to_owned())]
                    );
                    wrong.fetch_add(
                        usize::from(!ok || body != want.as_bytes()),
                        Ordering::SeqCst,
                    );
                    requests.fetch_add(1, Ordering::SeqCst);
                    i += 4;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = vault.rewrap(5, |_| {}).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(report.resealed + report.changed_meanwhile, 120);
    assert!(report.failed.is_empty());
    let (requests, wrong) = (
        requests.load(Ordering::SeqCst),
        wrong.load(Ordering::SeqCst),
    );
    eprintln!("rewrap under load: {requests} requests, {wrong} failed or wrong");
    assert!(
        requests > 50,
        "too few requests ran during the rewrap: {requests}"
    );
    assert_eq!(wrong, 0);
}

async fn verify_reports_rows_that_do_not_open(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(old()).await.unwrap();
    seed(&vault, 5).await;
    let mut blob = db.blob("user-003", "exa").await;
    blob[30] ^= 1;
    db.set_blob("user-003", "exa", &blob).await;
    let report = vault.verify(|_| {}).await.unwrap();
    assert_eq!(report.opened, 9);
    assert_eq!(report.failed.len(), 1);
    let failure = &report.failed[0];
    assert_eq!(
        (failure.provider.as_str(), failure.kind),
        ("exa", ErrorKind::Decrypt)
    );
    assert_eq!(failure.user_ref, vault.user_ref("user-003"));
    assert!(!format!("{report:?} {report}").contains("user-003"));
    // A rewrap leaves the broken row alone and reports it.
    let vault = db.open(both_new_active()).await.unwrap();
    let rewrap = vault.rewrap(3, |_| {}).await.unwrap();
    assert_eq!((rewrap.resealed, rewrap.failed.len()), (9, 1));
}

async fn retiring_a_key_still_in_use_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    seed(&db.open(old()).await.unwrap(), 3).await;
    let vault = db.open(both_new_active()).await.unwrap();
    assert_eq!(
        vault.retire_master_key("old").await.unwrap_err().kind(),
        ErrorKind::MasterKeyInUse
    );
    assert_eq!(
        vault.retire_master_key("new").await.unwrap_err().kind(),
        ErrorKind::MasterKeyInUse,
        "active"
    );
    let mut seen = Vec::new();
    vault
        .rewrap(2, |p| seen.push((p.done, p.total)))
        .await
        .unwrap();
    assert_eq!(seen, [(2, 6), (4, 6), (6, 6)]);
    vault.retire_master_key("old").await.unwrap();
    assert_eq!(
        vault.retire_master_key("old").await.unwrap_err().kind(),
        ErrorKind::InvalidKeyring,
        "twice"
    );
    assert_eq!(
        vault.retire_master_key("typo").await.unwrap_err().kind(),
        ErrorKind::InvalidKeyring
    );
    drop(vault);
    let vault = db.open(new()).await.unwrap();
    assert!(vault.verify(|_| {}).await.unwrap().is_ok());
}

async fn expiry_can_be_extended_cleared_and_purged(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(old()).await.unwrap();
    let past = SystemTime::now() - Duration::from_secs(1);
    vault.put("u", "openai", "sk-1").await.unwrap();
    vault.put("u", "exa", "exa-1").await.unwrap();
    vault.put("v", "gemini", "gem-1").await.unwrap();
    assert_eq!(
        vault.keys_for("u").await.unwrap().len(),
        2,
        "cached with both"
    );

    // Expiring a cached key takes effect at once.
    assert!(vault.set_expiry("u", "openai", Some(past)).await.unwrap());
    assert!(!vault.keys_for("u").await.unwrap().contains("openai"));
    assert!(vault.get("u", "openai").await.unwrap().is_none());
    // Extended: served again. Cleared back to never: stays.
    let later = SystemTime::now() + Duration::from_secs(3600);
    assert!(vault.set_expiry("u", "openai", Some(later)).await.unwrap());
    assert!(vault.keys_for("u").await.unwrap().contains("openai"));
    assert!(vault.set_expiry("u", "openai", None).await.unwrap());
    assert_eq!(
        vault
            .list("u")
            .await
            .unwrap()
            .iter()
            .find(|k| k.provider == "openai")
            .unwrap()
            .expires_at,
        None
    );
    assert!(!vault.set_expiry("u", "missing", None).await.unwrap());

    // Purge removes exactly the expired keys.
    vault.set_expiry("u", "exa", Some(past)).await.unwrap();
    vault.set_expiry("v", "gemini", Some(past)).await.unwrap();
    assert_eq!(vault.purge_expired().await.unwrap(), 2);
    assert_eq!(vault.purge_expired().await.unwrap(), 0);
    assert_eq!(vault.list("u").await.unwrap().len(), 1);
    assert!(vault.list("v").await.unwrap().is_empty());
    let purges = vault
        .audit_log(None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == AuditAction::Purge)
        .count();
    assert_eq!(purges, 2);
}

async fn every_change_is_audited_without_secrets_or_user_ids(backend: Backend) {
    const USER: &str = "planted-user-91c2@example.com";
    const SECRET: &str = "sk-PLANTED-AUDIT-SECRET-0123456789";
    let db = TestDb::new(backend).await;
    let vault = db
        .open(old())
        .await
        .unwrap()
        .with_actor("admin:ops")
        .unwrap();
    let t0 = SystemTime::now();
    vault.put(USER, "openai", SECRET).await.unwrap();
    vault.put(USER, "openai", SECRET).await.unwrap();
    vault
        .set_expiry(
            USER,
            "openai",
            Some(SystemTime::now() + Duration::from_secs(60)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t1 = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let vault = db
        .open(both_new_active())
        .await
        .unwrap()
        .with_actor("admin:ops")
        .unwrap();
    vault.rewrap(10, |_| {}).await.unwrap();
    vault.put(USER, "exa", SECRET).await.unwrap();
    vault
        .set_expiry(
            USER,
            "exa",
            Some(SystemTime::now() - Duration::from_secs(1)),
        )
        .await
        .unwrap();
    vault.purge_expired().await.unwrap();
    vault.delete(USER, "openai").await.unwrap();

    let trail = vault.audit_trail(USER).await.unwrap();
    let actions: Vec<_> = trail
        .iter()
        .map(|r| (r.provider.as_str(), r.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("openai", AuditAction::Put),
            ("openai", AuditAction::Replace),
            ("openai", AuditAction::ExpiryChange),
            ("openai", AuditAction::Rewrap),
            ("exa", AuditAction::Put),
            ("exa", AuditAction::ExpiryChange),
            ("exa", AuditAction::Purge),
            ("openai", AuditAction::Delete),
        ]
    );
    assert!(trail
        .iter()
        .all(|r| r.actor == "admin:ops" && r.user_ref == vault.user_ref(USER)));
    // The whole log by time range.
    let early = vault.audit_log(Some(t0), Some(t1)).await.unwrap();
    assert_eq!(early.len(), 3);
    let late = vault.audit_log(Some(t1), None).await.unwrap();
    assert_eq!(late.len(), 5);
    // No record, in any field, holds the secret or the user id; not even in raw SQL.
    let text = format!("{trail:?}");
    assert!(
        !text.contains(SECRET) && !text.contains(USER) && !text.contains("planted"),
        "{text}"
    );
    assert_eq!(
        db.exec(&format!(
            "DELETE FROM byok_audit WHERE user_ref = '{USER}' OR actor LIKE '%PLANTED%'"
        ))
        .await,
        0
    );
}

async fn a_failed_audit_write_undoes_the_change(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(old()).await.unwrap();
    vault.put("u", "openai", "sk-before").await.unwrap();
    // The audit table becomes unwritable: every change must fail and leave no trace.
    db.exec("ALTER TABLE byok_audit RENAME TO byok_audit_away")
        .await;
    assert_eq!(
        vault
            .put("u", "openai", "sk-after")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Store
    );
    assert_eq!(
        vault.put("u", "exa", "exa-new").await.unwrap_err().kind(),
        ErrorKind::Store
    );
    assert_eq!(
        vault.delete("u", "openai").await.unwrap_err().kind(),
        ErrorKind::Store
    );
    assert_eq!(
        vault
            .set_expiry("u", "openai", None)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Store
    );
    let keys = vault.get_all("u").await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys.get("openai").unwrap().expose_secret(), "sk-before");
    assert_eq!(vault.list("u").await.unwrap()[0].expires_at, None);
    db.exec("ALTER TABLE byok_audit_away RENAME TO byok_audit")
        .await;
    vault.put("u", "openai", "sk-after").await.unwrap();
    assert_eq!(vault.audit_trail("u").await.unwrap().len(), 2);
}
