//! The vault on real databases: isolation, persistence, concurrency, tampering, wrong
//! keys, leaks and migrations. Every test runs on SQLite and on PostgreSQL.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{keyring, master, Backend, TestDb};
use tower_byok::store::{KeyStore, SealedKey};
use tower_byok::{AuditAction, ErrorKind, Keyring, Owner, UserKeys, Vault};

per_backend!(
    users_see_only_their_own_keys_across_a_redeploy,
    two_hundred_users_store_keys_concurrently,
    partial_setup_resumes_and_replaces,
    swapped_or_moved_rows_fail_to_open,
    every_flipped_byte_and_truncation_fails,
    wrong_or_missing_master_key_is_refused_at_open,
    bad_input_is_a_typed_error_and_writes_nothing,
    expired_keys_are_never_served,
    secrets_and_user_ids_never_leak,
    host_migrations_and_ours_coexist_in_both_orders,
    deletes_are_scoped_and_audited,
    lookups_work_whatever_the_database_collation,
    instances_opening_a_new_database_together_agree,
    abandoned_writes_neither_wedge_the_store_nor_stale_the_cache,
    concurrent_cold_misses_make_one_load_every_time,
    concurrent_puts_at_the_provider_cap_never_overshoot,
    the_miss_read_is_fetch_user_narrowed,
);

// The same tests through PgBouncer, in transaction and in session mode.
crate::behind_poolers!(
    users_see_only_their_own_keys_across_a_redeploy,
    two_hundred_users_store_keys_concurrently,
    partial_setup_resumes_and_replaces,
    wrong_or_missing_master_key_is_refused_at_open,
    bad_input_is_a_typed_error_and_writes_nothing,
    expired_keys_are_never_served,
    deletes_are_scoped_and_audited,
    instances_opening_a_new_database_together_agree,
    concurrent_cold_misses_make_one_load_every_time,
    concurrent_puts_at_the_provider_cap_never_overshoot,
    the_miss_read_is_fetch_user_narrowed,
);

/// The narrower read a cache miss makes (`KeyStore::fetch_user_sealed`, overridden by
/// the built-in stores) returns exactly `fetch_user`'s rows, in its order, narrowed to
/// the columns serving needs: the user's own keys, expiring ones with their expiry, and
/// neither a team's keys under the same id nor another user's.
async fn the_miss_read_is_fetch_user_narrowed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let expires = SystemTime::now() + Duration::from_secs(3600);
    vault
        .put("shared", "openai", "sk-own-0123456789")
        .await
        .unwrap();
    vault
        .put_expiring("shared", "anthropic", "sk-ant-own-0123456789", expires)
        .await
        .unwrap();
    vault
        .put_for(Owner::team("shared"), "gemini", "AIza-team-0123456789")
        .await
        .unwrap();
    vault
        .put("other", "mistral", "mistral-other-0123456789")
        .await
        .unwrap();
    match backend {
        Backend::Sqlite => {
            let store = tower_byok::SqliteStore::open(db.sqlite_path())
                .await
                .unwrap();
            narrowed_is_full_read(&store).await;
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres => narrowed_is_full_read(&db.pg_store(2).await.unwrap()).await,
    }
    // And the vault serves what the narrow read returned.
    let keys = vault.keys_for("shared").await.unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.get("anthropic").unwrap().expires_at().is_some());
}

async fn narrowed_is_full_read(store: &impl KeyStore) {
    let full: Vec<SealedKey> = store
        .fetch_user("shared")
        .await
        .unwrap()
        .into_iter()
        .map(SealedKey::from)
        .collect();
    let narrow = store.fetch_user_sealed("shared").await.unwrap();
    assert_eq!(full.len(), 2, "the user's two keys, no team's: {full:?}");
    assert_eq!(narrow, full);
    assert!(narrow.iter().any(|k| k.expires_at.is_some()));
}

/// A user one below the cap puts two new providers at once, many times over: exactly one
/// of each pair is stored, the other is refused and leaves nothing behind. On PostgreSQL
/// this needs the per-user lock: READ COMMITTED alone lets both counts see room.
async fn concurrent_puts_at_the_provider_cap_never_overshoot(backend: Backend) {
    const CAP: u32 = 3;
    const ROUNDS: usize = 40;
    let db = TestDb::new(backend).await;
    let opts = common::Opts {
        max_providers: CAP,
        ..common::Opts::default()
    };
    let vault = db.open_with(keyring(), opts).await.unwrap();
    let mut overshoots = 0;
    for round in 0..ROUNDS {
        let user = format!("user-{round}");
        for p in 0..CAP - 1 {
            vault
                .put(&user, &format!("p{p}"), "sk-seed-0123456789")
                .await
                .unwrap();
        }
        // Eight writers race for the one free place.
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let (vault, user, barrier) = (vault.clone(), user.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    vault
                        .put(&user, &format!("new{i}"), &format!("sk-new-{i}-0123456789"))
                        .await
                })
            })
            .collect();
        let mut stored = 0;
        for racer in racers {
            match racer.await.unwrap() {
                Ok(action) => {
                    assert_eq!(action, AuditAction::Put);
                    stored += 1;
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::TooManyProviders, "{e}");
                    assert!(!e.to_string().contains(&user), "{e}");
                }
            }
        }
        let held = vault.list(&user).await.unwrap().len();
        assert_eq!(held, vault.get_all(&user).await.unwrap().len());
        if stored != 1 || held != CAP as usize {
            overshoots += 1;
        }
        // At the cap, a replace is still allowed.
        assert_eq!(
            vault
                .put(&user, "p0", "sk-replaced-0123456789")
                .await
                .unwrap(),
            AuditAction::Replace
        );
    }
    assert_eq!(
        overshoots, 0,
        "rounds of {ROUNDS} where the cap did not hold exactly"
    );
}

async fn concurrent_cold_misses_make_one_load_every_time(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (vault, probe) = db.open_probed(keyring(), common::Opts::default()).await;
    vault.put("cold", "openai", "sk-cold").await.unwrap();
    // Unlike the layer test, nothing holds the load back: requests keep arriving while
    // it finishes, which is where a second load could slip in.
    let mut extra = 0;
    for round in 0..400 {
        vault.forget_cached("cold");
        let before = probe.loads();
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                let vault = vault.clone();
                tokio::spawn(async move { vault.keys_for("cold").await.unwrap().len() })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), 1);
        }
        let loads = probe.loads() - before;
        assert!(loads >= 1, "round {round}");
        extra += loads - 1;
    }
    assert_eq!(
        extra, 0,
        "extra database loads over 400 rounds of 500 concurrent cold misses"
    );
}

async fn abandoned_writes_neither_wedge_the_store_nor_stale_the_cache(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault.put("u", "openai", "sk-0").await.unwrap();
    // Clients that disconnect: each write's future is dropped at some point of its way.
    for i in 0..120u64 {
        let writer = vault.clone();
        let task = tokio::spawn(async move {
            if i % 3 == 0 {
                writer.delete("u", "exa").await
            } else {
                writer
                    .put(
                        "u",
                        if i % 2 == 0 { "openai" } else { "exa" },
                        &format!("sk-{i}"),
                    )
                    .await
                    .map(|_| true)
            }
        });
        tokio::time::sleep(Duration::from_micros(150 * (i % 17))).await;
        task.abort();
        let _ = vault.keys_for("u").await;
    }
    // The store still takes writes at once, and the cache agrees with the database.
    let done = tokio::time::timeout(
        Duration::from_secs(5),
        vault.put("u", "gemini", "gem-final"),
    )
    .await;
    done.expect("a write after abandoned ones must not wait on a stuck transaction")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        as_map(&vault.keys_for("u").await.unwrap()),
        as_map(&vault.get_all("u").await.unwrap())
    );
    let fresh = db.open(keyring()).await.unwrap();
    assert_eq!(
        as_map(&vault.keys_for("u").await.unwrap()),
        as_map(&fresh.get_all("u").await.unwrap())
    );
}

async fn instances_opening_a_new_database_together_agree(backend: Backend) {
    for _ in 0..8 {
        let db = TestDb::new(backend).await;
        // One instance still on k1 alone, one already deployed with k2 active (rotation
        // rolled out onto a brand-new database): both must end up sharing one vault.
        let rotated = || {
            Keyring::new(master("k2", 9))
                .with_key(master("k1", 7))
                .unwrap()
        };
        let (a, b) = tokio::join!(db.open(keyring()), db.open(rotated()));
        let (a, b) = (a.unwrap(), b.unwrap());
        a.put("u", "openai", "sk-from-a").await.unwrap();
        b.put("u", "exa", "exa-from-b").await.unwrap();
        assert_eq!(a.fingerprint("x"), b.fingerprint("x"), "one vault secret");
        drop((a, b));
        let again = db.open(rotated()).await.unwrap();
        assert_eq!(again.get_all("u").await.unwrap().len(), 2);
        // b's row is sealed under k2: a k1-only instance is refused at start-up.
        let err = db.open(keyring()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongMasterKey);
    }
}

async fn lookups_work_whatever_the_database_collation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let providers = ["ab", "a-z", "a_b", "a.b", "a0", "b"];
    for p in providers {
        vault.put("u", p, &format!("secret-{p}")).await.unwrap();
    }
    for keys in [
        vault.get_all("u").await.unwrap(),
        vault.keys_for("u").await.unwrap(),
    ] {
        for p in providers {
            assert_eq!(
                keys.get(p).map(|k| k.expose_secret().to_owned()),
                Some(format!("secret-{p}")),
                "{p}"
            );
        }
        let listed: Vec<&str> = keys.providers().collect();
        let mut bytewise = listed.clone();
        bytewise.sort_unstable();
        assert_eq!(listed, bytewise);
    }
}

fn as_map(keys: &UserKeys) -> BTreeMap<String, String> {
    keys.iter()
        .map(|k| (k.provider().to_owned(), k.expose_secret().to_owned()))
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(p, s)| ((*p).to_owned(), (*s).to_owned()))
        .collect()
}

async fn users_see_only_their_own_keys_across_a_redeploy(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault
        .put("user-a", "openai", "sk-a-openai-000001")
        .await
        .unwrap();
    vault
        .put("user-a", "Gemini", "AIza-a-gemini-000001")
        .await
        .unwrap();
    vault
        .put("user-b", "openai", "sk-b-openai-000002")
        .await
        .unwrap();

    async fn check(vault: &Vault) {
        let a = vault.get_all("user-a").await.unwrap();
        assert_eq!(
            as_map(&a),
            map(&[
                ("gemini", "AIza-a-gemini-000001"),
                ("openai", "sk-a-openai-000001")
            ])
        );
        let b = vault.get_all("user-b").await.unwrap();
        assert_eq!(as_map(&b), map(&[("openai", "sk-b-openai-000002")]));
        assert!(vault.get("user-b", "gemini").await.unwrap().is_none());
        assert_eq!(
            vault
                .get("user-b", "OPENAI")
                .await
                .unwrap()
                .unwrap()
                .expose_secret(),
            "sk-b-openai-000002"
        );
        assert!(vault.get_all("user-c").await.unwrap().is_empty());
        assert!(vault.list("user-c").await.unwrap().is_empty());
        assert!(vault.keys_for("user-c").await.unwrap().is_empty());
        assert_eq!(as_map(&vault.keys_for("user-a").await.unwrap()), as_map(&a));
    }
    check(&vault).await;

    // A redeploy: every handle closed, the database reopened by a new process.
    drop(vault);
    let vault = db.open(keyring()).await.unwrap();
    check(&vault).await;
}

async fn two_hundred_users_store_keys_concurrently(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let vault = vault.clone();
            tokio::spawn(async move {
                let user = format!("user-{i}");
                vault
                    .put(&user, "openai", &format!("sk-openai-{i:04}"))
                    .await
                    .unwrap();
                vault
                    .put(&user, "exa", &format!("exa-{i:04}-key"))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut wrong = 0;
    for i in 0..200 {
        let keys = vault.get_all(&format!("user-{i}")).await.unwrap();
        let expected = map(&[
            ("exa", &format!("exa-{i:04}-key")),
            ("openai", &format!("sk-openai-{i:04}")),
        ]);
        wrong += usize::from(as_map(&keys) != expected);
    }
    assert_eq!(wrong, 0, "users with missing or wrong keys");
}

async fn partial_setup_resumes_and_replaces(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    assert_eq!(
        vault.put("u", "gemini", "gem-key-1").await.unwrap(),
        AuditAction::Put
    );
    assert_eq!(vault.get_all("u").await.unwrap().len(), 1);
    // The user comes back later (another process) and finishes onboarding.
    drop(vault);
    let vault = db.open(keyring()).await.unwrap();
    vault.put("u", "exa", "exa-key-1").await.unwrap();
    vault.put("u", "openai", "sk-key-1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        vault.put("u", "gemini", "gem-key-2").await.unwrap(),
        AuditAction::Replace
    );
    assert_eq!(
        as_map(&vault.get_all("u").await.unwrap()),
        map(&[
            ("exa", "exa-key-1"),
            ("gemini", "gem-key-2"),
            ("openai", "sk-key-1")
        ])
    );
    let listed = vault.list("u").await.unwrap();
    let gemini = listed.iter().find(|k| k.provider == "gemini").unwrap();
    assert!(
        gemini.updated_at > gemini.created_at,
        "replace keeps created_at"
    );
    assert_eq!(gemini.fingerprint, vault.fingerprint("gem-key-2"));
    let actions: Vec<_> = vault
        .audit_trail("u")
        .await
        .unwrap()
        .iter()
        .map(|r| (r.provider.clone(), r.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("gemini".to_owned(), AuditAction::Put),
            ("exa".to_owned(), AuditAction::Put),
            ("openai".to_owned(), AuditAction::Put),
            ("gemini".to_owned(), AuditAction::Replace),
        ]
    );
}

async fn swapped_or_moved_rows_fail_to_open(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault.put("user-a", "openai", "sk-a-openai").await.unwrap();
    vault.put("user-a", "gemini", "gem-a").await.unwrap();
    vault.put("user-b", "openai", "sk-b-openai").await.unwrap();
    vault.put("user-b", "exa", "exa-b").await.unwrap();

    // Swap the sealed blobs of two users' openai rows.
    let a = db.blob("user-a", "openai").await;
    let b = db.blob("user-b", "openai").await;
    db.set_blob("user-a", "openai", &b).await;
    db.set_blob("user-b", "openai", &a).await;
    for user in ["user-a", "user-b"] {
        assert_eq!(
            vault.get(user, "openai").await.unwrap_err().kind(),
            ErrorKind::Decrypt
        );
        assert_eq!(
            vault.get_all(user).await.unwrap_err().kind(),
            ErrorKind::Decrypt
        );
        assert_eq!(
            vault.keys_for(user).await.unwrap_err().kind(),
            ErrorKind::Decrypt
        );
    }
    db.set_blob("user-a", "openai", &a).await;
    db.set_blob("user-b", "openai", &b).await;
    assert_eq!(
        vault
            .get("user-a", "openai")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "sk-a-openai"
    );

    // Swap two providers of one user.
    let gem = db.blob("user-a", "gemini").await;
    db.set_blob("user-a", "gemini", &a).await;
    db.set_blob("user-a", "openai", &gem).await;
    assert_eq!(
        vault.get("user-a", "openai").await.unwrap_err().kind(),
        ErrorKind::Decrypt
    );
    assert_eq!(
        vault.get("user-a", "gemini").await.unwrap_err().kind(),
        ErrorKind::Decrypt
    );

    // Move a whole row to another user.
    assert_eq!(
        db.exec(
            "UPDATE byok_keys SET user_id = 'user-c' WHERE user_id = 'user-b' AND provider = 'exa'"
        )
        .await,
        1
    );
    assert_eq!(
        vault.get("user-c", "exa").await.unwrap_err().kind(),
        ErrorKind::Decrypt
    );

    // Relabel a row with a master key id the keyring does not hold, or another it holds.
    assert_eq!(
        db.exec("UPDATE byok_keys SET key_id = 'k9' WHERE user_id = 'user-b'")
            .await,
        1
    );
    assert_eq!(
        vault.get("user-b", "openai").await.unwrap_err().kind(),
        ErrorKind::UnknownMasterKey
    );
    // A new process refuses such a database at start-up, naming the missing key.
    let err = db.open(keyring()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongMasterKey);
    assert!(err.to_string().contains("1 under `k9`"), "{err}");
    assert_eq!(
        db.exec("UPDATE byok_keys SET key_id = 'k1' WHERE user_id = 'user-b'")
            .await,
        1
    );
    let two = Keyring::new(master("k2", 9))
        .with_key(master("k1", 7))
        .unwrap();
    let vault = db.open(two).await.unwrap();
    assert_eq!(
        db.exec("UPDATE byok_keys SET key_id = 'k2' WHERE user_id = 'user-b'")
            .await,
        1
    );
    assert_eq!(
        vault.get("user-b", "openai").await.unwrap_err().kind(),
        ErrorKind::Decrypt
    );
}

async fn every_flipped_byte_and_truncation_fails(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault
        .put("u", "openai", "sk-proj-0123456789")
        .await
        .unwrap();
    let good = db.blob("u", "openai").await;
    assert_eq!(good.len(), 1 + 24 + 18 + 16);
    let mut failures = 0;
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x20;
        db.set_blob("u", "openai", &bad).await;
        let err = vault
            .get("u", "openai")
            .await
            .expect_err("a flipped byte must not open");
        assert_eq!(err.kind(), ErrorKind::Decrypt, "byte {i}");
        failures += 1;
    }
    for len in 0..good.len() {
        db.set_blob("u", "openai", &good[..len]).await;
        let err = vault
            .get("u", "openai")
            .await
            .expect_err("a truncated blob must not open");
        assert_eq!(err.kind(), ErrorKind::Decrypt, "length {len}");
        failures += 1;
    }
    assert_eq!(failures, 2 * good.len());
    db.set_blob("u", "openai", &good).await;
    assert_eq!(
        vault
            .get("u", "openai")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "sk-proj-0123456789"
    );
}

async fn wrong_or_missing_master_key_is_refused_at_open(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault.put("u", "openai", "sk-under-k1").await.unwrap();
    drop(vault);

    // The same id with other bytes (a mistyped or regenerated key), or another id only.
    for wrong in [Keyring::new(master("k1", 8)), Keyring::new(master("k2", 7))] {
        let err = db
            .open(wrong)
            .await
            .expect_err("a keyring that cannot read the database");
        assert_eq!(err.kind(), ErrorKind::WrongMasterKey);
    }
    // A right key beside a wrong one with the same id as a check record: refused too.
    let mixed = Keyring::new(master("k2", 9))
        .with_key(master("k1", 8))
        .unwrap();
    assert_eq!(
        db.open(mixed).await.unwrap_err().kind(),
        ErrorKind::WrongMasterKey
    );

    // Rotation: a new active key beside the old one opens, and registers the new key.
    let rotated = Keyring::new(master("k2", 9))
        .with_key(master("k1", 7))
        .unwrap();
    let vault = db.open(rotated).await.unwrap();
    assert_eq!(
        vault
            .get("u", "openai")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "sk-under-k1"
    );
    vault.put("u", "exa", "exa-under-k2").await.unwrap();
    drop(vault);
    // The new key alone is refused while rows are still sealed under the old one...
    let err = db.open(Keyring::new(master("k2", 9))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongMasterKey);
    assert!(err.to_string().contains("1 under `k1`"), "{err}");
    // ...and opens once a rewrap has moved them.
    let both = Keyring::new(master("k2", 9))
        .with_key(master("k1", 7))
        .unwrap();
    let report = db
        .open(both)
        .await
        .unwrap()
        .rewrap(10, |_| {})
        .await
        .unwrap();
    assert_eq!(report.resealed, 1);
    let vault = db.open(Keyring::new(master("k2", 9))).await.unwrap();
    assert_eq!(
        vault
            .get("u", "openai")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "sk-under-k1"
    );
}

async fn bad_input_is_a_typed_error_and_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let long_user = "u".repeat(256);
    let huge = "s".repeat(16 * 1024 + 1);
    let cases: [(&str, &str, &str, ErrorKind); 6] = [
        ("", "openai", "sk", ErrorKind::InvalidUserId),
        (&long_user, "openai", "sk", ErrorKind::InvalidUserId),
        ("u", "open ai", "sk", ErrorKind::InvalidProvider),
        ("u", "-openai", "sk", ErrorKind::InvalidProvider),
        ("u", "openai", "", ErrorKind::InvalidSecret),
        ("u", "openai", &huge, ErrorKind::InvalidSecret),
    ];
    for (user, provider, secret, kind) in cases {
        assert_eq!(
            vault.put(user, provider, secret).await.unwrap_err().kind(),
            kind
        );
    }
    assert!(vault.list("u").await.unwrap().is_empty());
    assert!(vault.audit_trail("u").await.unwrap().is_empty());
    // The largest accepted secret: a multi-line JSON credential fits.
    let json = format!(
        "{{\n  \"type\": \"service_account\",\n  \"private_key\": \"{}\"\n}}\n",
        "k".repeat(16 * 1024 - 60)
    );
    assert!(json.len() <= 16 * 1024);
    vault.put("u", "gcp", &json).await.unwrap();
    assert_eq!(
        vault
            .get("u", "gcp")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        json
    );
    assert_eq!(
        vault.with_actor("bad actor").unwrap_err().kind(),
        ErrorKind::InvalidActor
    );
}

async fn expired_keys_are_never_served(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let soon = SystemTime::now() + Duration::from_millis(600);
    vault
        .put_expiring("u", "openai", "sk-session-key", soon)
        .await
        .unwrap();
    vault.put("u", "exa", "exa-forever").await.unwrap();
    // Served while valid, and cached.
    assert_eq!(vault.keys_for("u").await.unwrap().len(), 2);
    assert!(vault.get("u", "openai").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Past the expiry: not from the database, and not from the cache either.
    assert!(vault.get("u", "openai").await.unwrap().is_none());
    assert_eq!(
        as_map(&vault.get_all("u").await.unwrap()),
        map(&[("exa", "exa-forever")])
    );
    assert_eq!(
        as_map(&vault.keys_for("u").await.unwrap()),
        map(&[("exa", "exa-forever")])
    );
    let listed = vault.list("u").await.unwrap();
    assert!(listed
        .iter()
        .any(|k| k.provider == "openai" && k.is_expired()));
}

async fn deletes_are_scoped_and_audited(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db
        .open(keyring())
        .await
        .unwrap()
        .with_actor("admin:support")
        .unwrap();
    for (user, provider) in [
        ("a", "openai"),
        ("a", "exa"),
        ("a", "gemini"),
        ("b", "openai"),
    ] {
        vault
            .put(user, provider, &format!("{user}-{provider}-secret"))
            .await
            .unwrap();
    }
    assert!(vault.delete("a", "openai").await.unwrap());
    assert!(!vault.delete("a", "openai").await.unwrap());
    assert_eq!(vault.delete_all("a").await.unwrap(), 2);
    assert!(vault.get_all("a").await.unwrap().is_empty());
    assert_eq!(
        as_map(&vault.get_all("b").await.unwrap()),
        map(&[("openai", "b-openai-secret")])
    );
    let trail = vault.audit_trail("a").await.unwrap();
    let deletes: Vec<_> = trail
        .iter()
        .filter(|r| r.action == AuditAction::Delete)
        .map(|r| r.provider.as_str())
        .collect();
    assert_eq!(deletes.len(), 3);
    assert!(deletes.contains(&"exa") && deletes.contains(&"gemini") && deletes[0] == "openai");
    assert!(trail
        .iter()
        .all(|r| r.actor == "admin:support" && r.user_ref == vault.user_ref("a")));
    assert_eq!(vault.audit_trail("b").await.unwrap().len(), 1);
}

/// A `tracing` writer that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn secrets_and_user_ids_never_leak(backend: Backend) {
    const USER: &str = "planted-user-7f3a@example.com";
    const SECRET: &str = "sk-PLANTED-0123456789abcdef-SECRET";
    const MIDDLE: &str = "0123456789abcdef";
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test body runs on this thread (block_on), and nothing below is spawned.
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    let mut shown: Vec<String> = Vec::new();
    vault.put(USER, "openai", SECRET).await.unwrap();
    vault.put(USER, "openai", SECRET).await.unwrap();
    vault.put(USER, "exa", SECRET).await.unwrap();
    let keys = vault.keys_for(USER).await.unwrap();
    shown.push(format!("{keys:?} {:?} {vault:?}", keys.get("openai")));
    shown.push(format!("{:?}", vault.list(USER).await.unwrap()));
    shown.push(format!("{:?}", vault.audit_trail(USER).await.unwrap()));
    shown.push(format!("{:?}", vault.get(USER, "openai").await.unwrap()));

    let mut errors = Vec::new();
    errors.push(vault.put(USER, "bad provider", SECRET).await.unwrap_err());
    errors.push(
        vault
            .put(&format!("{USER}{}", "x".repeat(255)), "openai", SECRET)
            .await
            .unwrap_err(),
    );
    errors.push(
        vault
            .put(
                USER,
                "openai",
                &format!("{SECRET}{}", "x".repeat(16 * 1024)),
            )
            .await
            .unwrap_err(),
    );
    let blob = db.blob(USER, "openai").await;
    let mut bad = blob.clone();
    bad[30] ^= 1;
    db.set_blob(USER, "openai", &bad).await;
    errors.push(vault.get(USER, "openai").await.unwrap_err());
    errors.push(vault.get_all(USER).await.unwrap_err());
    // The cache still holds the keys read before the raw tampering; a new process does not.
    let reopened = db.open(keyring()).await.unwrap();
    errors.push(reopened.keys_for(USER).await.unwrap_err());
    drop((vault, reopened));
    errors.push(db.open(Keyring::new(master("k1", 99))).await.unwrap_err());
    for e in &errors {
        let mut text = format!("{e} | {e:?}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(&format!(" | {s} | {s:?}"));
            source = s.source();
        }
        shown.push(text);
    }
    drop(_guard);
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("failed to decrypt"),
        "the decryption failure is logged: {logs}"
    );
    for text in shown.iter().chain([&logs]) {
        for planted in [USER, "planted-user", SECRET, MIDDLE] {
            assert!(!text.contains(planted), "{planted:?} leaked into: {text}");
        }
    }
}

async fn host_migrations_and_ours_coexist_in_both_orders(backend: Backend) {
    // The host application first, then ours, then both again.
    let db = TestDb::new(backend).await;
    db.run_host_migrations().await.unwrap();
    let vault = db.open(keyring()).await.unwrap();
    vault.put("u", "openai", "sk-1").await.unwrap();
    db.run_host_migrations().await.unwrap();
    drop(vault);
    let vault = db.open(keyring()).await.unwrap();
    assert_eq!(
        vault
            .get("u", "openai")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "sk-1"
    );
    assert_eq!(
        db.exec("INSERT INTO app_users (id, email) VALUES (1, 'a@example.com')")
            .await,
        1
    );

    // Ours first, then the host application's, then both again.
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault.put("u", "openai", "sk-2").await.unwrap();
    db.run_host_migrations().await.unwrap();
    drop(vault);
    let vault = db.open(keyring()).await.unwrap();
    db.run_host_migrations().await.unwrap();
    assert_eq!(
        vault
            .get("u", "openai")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "sk-2"
    );
    assert_eq!(
        db.exec("INSERT INTO app_users (id, email) VALUES (1, 'a@example.com')")
            .await,
        1
    );
    assert_eq!(
        db.exec("INSERT INTO app_sessions (token, user_id) VALUES ('t', 1)")
            .await,
        1
    );
}

/// A replacement within the same millisecond as the first write is still a replace.
#[tokio::test]
async fn a_quick_replace_is_audited_as_replace() {
    let db = TestDb::new(Backend::Sqlite).await;
    let vault = db.open(keyring()).await.unwrap();
    for i in 0..50 {
        let user = format!("u{i}");
        assert_eq!(
            vault.put(&user, "openai", "sk-1").await.unwrap(),
            AuditAction::Put
        );
        assert_eq!(
            vault.put(&user, "openai", "sk-2").await.unwrap(),
            AuditAction::Replace
        );
    }
}
