//! Rotating master keys: re-sealing, verifying, retiring.

use tower_byok::Keyring;

use crate::common::Backend;
use crate::{mode, Env};

crate::per_backend!(
    rotate_rewrap_verify_retire,
    rewrap_and_verify_fail_on_a_key_that_does_not_open,
);

// The same through PgBouncer, in transaction and in session mode.
crate::behind_poolers!(
    rotate_rewrap_verify_retire,
    rewrap_and_verify_fail_on_a_key_that_does_not_open,
);

async fn rotate_rewrap_verify_retire(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let keys = [
        ("alice", "openai", "sk-proj-alice-rotate-0123456789"),
        ("alice", "exa", "exa-alice-rotate-0123456789"),
        ("bob", "openai", "sk-proj-bob-rotate-0123456789"),
    ];
    for (user, provider, secret) in keys {
        env.put("k1.keys", user, provider, secret);
    }

    // The new keyring: k2 first, k1 after it; owner-only; never overwrites.
    let rotate = env
        .run(
            &[
                "--keyring-file",
                "k1.keys",
                "rotate",
                "--id",
                "k2",
                "--out",
                "k2.keys",
            ],
            None,
        )
        .ok();
    env.remember_keys("k2.keys");
    env.check(&rotate);
    rotate
        .says("k2.keys")
        .says("rewrap")
        .says("verify")
        .says("retire --key-id k1");
    assert_eq!(mode(&env.path("k2.keys")), 0o600);
    let ring = Keyring::from_file(env.path("k2.keys")).unwrap();
    assert_eq!(ring.ids().collect::<Vec<_>>(), ["k2", "k1"]);
    let k1 = Keyring::from_file(env.path("k1.keys")).unwrap();
    assert_eq!(
        *ring.get("k1").unwrap().expose_keyring_line(),
        *k1.active().expose_keyring_line()
    );
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "rotate",
            "--id",
            "k1",
            "--out",
            "other.keys",
        ],
        None,
    )
    .fails(1, "already holds a key `k1`");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "rotate",
            "--id",
            "k3",
            "--out",
            "k2.keys",
        ],
        None,
    )
    .fails(1, "already exists");

    // Before the rewrap: everything under k1, and k1 cannot be retired.
    env.run(&["--keyring-file", "k2.keys", "usage"], None)
        .ok()
        .says("k1          3     in keyring")
        .says("k2          0     active");
    env.run(
        &["--keyring-file", "k2.keys", "retire", "--key-id", "k1"],
        None,
    )
    .fails(1, "still sealed under `k1`");
    env.run(
        &["--keyring-file", "k2.keys", "retire", "--key-id", "k2"],
        None,
    )
    .fails(1, "active key cannot be retired");

    // The rewrap re-seals all three, then verifies; no progress bar without a terminal.
    let rewrap = env
        .run(
            &["--keyring-file", "k2.keys", "rewrap", "--batch", "2"],
            None,
        )
        .ok();
    rewrap
        .says("3 keys re-sealed under `k2`")
        .says("verify: 3 keys open, 0 failed; 3 under `k2`")
        .says("`k1` can be retired");
    assert_eq!(rewrap.stderr, "", "{rewrap:#?}");
    // Run again, it has nothing left to do.
    env.run(&["--keyring-file", "k2.keys", "rewrap"], None)
        .ok()
        .says("0 keys re-sealed");
    env.run(&["--keyring-file", "k2.keys", "verify"], None)
        .ok()
        .says("3 keys open, 0 failed");

    // Retire k1, writing the keyring without it.
    env.run(
        &[
            "--keyring-file",
            "k2.keys",
            "retire",
            "--key-id",
            "k1",
            "--out",
            "k3.keys",
        ],
        None,
    )
    .ok()
    .says("retired `k1`")
    .says("k3.keys");
    assert_eq!(mode(&env.path("k3.keys")), 0o600);
    let ring = Keyring::from_file(env.path("k3.keys")).unwrap();
    assert_eq!(ring.ids().collect::<Vec<_>>(), ["k2"]);

    // With only k2, everything opens; the old keyring alone no longer can.
    env.run(&["--keyring-file", "k3.keys", "verify"], None)
        .ok()
        .says("3 keys open, 0 failed; 3 under `k2`");
    env.run(
        &["--keyring-file", "k3.keys", "list", "--user", "alice"],
        None,
    )
    .ok()
    .says(" k2 ");
    let vault = env.vault("k3.keys").await.unwrap();
    for (user, provider, secret) in keys {
        let key = vault.get(user, provider).await.unwrap().unwrap();
        assert_eq!(key.expose_secret(), secret);
    }
    env.run(&["--keyring-file", "k1.keys", "verify"], None)
        .fails(1, "cannot read this database");
}

async fn rewrap_and_verify_fail_on_a_key_that_does_not_open(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    env.put(
        "k1.keys",
        "alice",
        "openai",
        "sk-proj-alice-tamper-0123456789",
    );
    env.put("k1.keys", "bob", "openai", "sk-proj-bob-tamper-0123456789");
    env.tamper("bob", "openai").await;

    let verify = env
        .run(&["--keyring-file", "k1.keys", "verify"], None)
        .fails(1, "1 stored key did not open");
    verify
        .says("1 keys open, 1 failed")
        .says("does not open: provider openai, master key `k1`, user ref ");
    assert!(!verify.stdout.contains("bob"), "{verify:#?}");

    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "rotate",
            "--id",
            "k2",
            "--out",
            "k2.keys",
        ],
        None,
    )
    .ok();
    env.remember_keys("k2.keys");
    env.run(&["--keyring-file", "k2.keys", "rewrap"], None)
        .fails(1, "did not open")
        .says("1 key re-sealed under `k2`")
        .says("1 failed");
}
