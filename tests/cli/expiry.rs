//! Expiring keys and purging them.

use crate::common::Backend;
use crate::Env;

crate::per_backend!(expiring_and_purging,);

// The same through PgBouncer, in transaction and in session mode.
crate::behind_poolers!(expiring_and_purging,);

async fn expiring_and_purging(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let ring = ["--keyring-file", "k1.keys"];
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut all = ring.to_vec();
        all.extend_from_slice(args);
        env.run(&all, stdin)
    };
    let trial = env.secret("sk-proj-trial-0123456789abcdef");
    run(
        &[
            "put",
            "--user",
            "alice",
            "--provider",
            "openai",
            "--expires-in",
            "2h",
        ],
        Some(&trial),
    )
    .ok()
    .says(", expires 20");
    env.put("k1.keys", "alice", "exa", "exa-alice-expiry-0123456789");

    let list = run(&["list", "--user", "alice"], None).ok();
    let openai_line = list
        .stdout
        .lines()
        .find(|l| l.starts_with("openai"))
        .unwrap();
    assert!(openai_line.trim_end().ends_with('Z'), "{list:#?}");

    // Expire openai at once: still listed, marked, not served, then purged.
    run(
        &[
            "expire",
            "--user",
            "alice",
            "--provider",
            "openai",
            "--in",
            "0s",
        ],
        None,
    )
    .ok()
    .says("has expired");
    run(&["list", "--user", "alice"], None)
        .ok()
        .says("(expired)");
    let vault = env.vault("k1.keys").await.unwrap();
    assert!(vault.get("alice", "openai").await.unwrap().is_none());

    // exa: an expiry, then cleared again.
    run(
        &[
            "expire",
            "--user",
            "alice",
            "--provider",
            "exa",
            "--in",
            "1d",
        ],
        None,
    )
    .ok()
    .says("now expires at ")
    .says("(in 1d)");
    run(
        &["expire", "--user", "alice", "--provider", "exa", "--never"],
        None,
    )
    .ok()
    .says("never expires");

    run(&["purge-expired"], None)
        .ok()
        .says("purged 1 expired key");
    run(&["purge-expired"], None)
        .ok()
        .says("purged 0 expired keys");
    let left: Vec<String> = vault
        .list("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.provider)
        .collect();
    assert_eq!(left, ["exa"]);

    // A key that is not there, and command lines that do not parse.
    run(
        &[
            "expire",
            "--user",
            "alice",
            "--provider",
            "openai",
            "--never",
        ],
        None,
    )
    .fails(1, "no openai key");
    run(&["expire", "--user", "alice", "--provider", "exa"], None).fails(2, "required");
    run(
        &[
            "expire",
            "--user",
            "alice",
            "--provider",
            "exa",
            "--in",
            "1h",
            "--never",
        ],
        None,
    )
    .fails(2, "cannot be used with");
    run(
        &[
            "expire",
            "--user",
            "alice",
            "--provider",
            "exa",
            "--in",
            "soon",
        ],
        None,
    )
    .fails(2, "expected a number and a unit");
}
