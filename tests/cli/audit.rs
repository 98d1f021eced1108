//! The audit trail.

use crate::common::Backend;
use crate::Env;

crate::per_backend!(audit_shows_what_happened_without_secrets_or_user_ids,);

async fn audit_shows_what_happened_without_secrets_or_user_ids(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let (alice, bob) = (
        env.secret("alice.audit@example.com"),
        env.secret("bob.audit@example.com"),
    );
    let (alice, bob) = (alice.as_str(), bob.as_str());
    env.put("k1.keys", alice, "openai", "sk-proj-alice-audit-0000000001");
    env.put("k1.keys", alice, "openai", "sk-proj-alice-audit-0000000002");
    env.put("k1.keys", bob, "exa", "exa-bob-audit-0123456789");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "--actor",
            "admin:ops",
            "delete",
            "--user",
            bob,
            "--provider",
            "exa",
        ],
        None,
    )
    .ok();
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "expire",
            "--user",
            alice,
            "--provider",
            "openai",
            "--in",
            "1h",
        ],
        None,
    )
    .ok();

    let all = env.run(&["--keyring-file", "k1.keys", "audit"], None).ok();
    all.says("time").says("user ref");
    let lines: Vec<&str> = all.stdout.lines().skip(1).collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        actions,
        ["put", "replace", "put", "delete", "expiry"],
        "{all:#?}"
    );
    assert!(lines[3].contains("admin:ops") && lines[0].contains(" cli "));
    assert!(lines[0].starts_with("20") && lines[0].contains('T'));

    let vault = env.vault("k1.keys").await.unwrap();
    let alice_ref = vault.user_ref(alice);
    let mine = env
        .run(
            &["--keyring-file", "k1.keys", "audit", "--user", alice],
            None,
        )
        .ok();
    let mine_lines: Vec<&str> = mine.stdout.lines().skip(1).collect();
    assert_eq!(mine_lines.len(), 3, "{mine:#?}");
    assert!(mine_lines.iter().all(|l| l.ends_with(alice_ref.as_str())));

    // Time windows: RFC 3339, dates and Unix seconds.
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "audit",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
        None,
    )
    .ok()
    .says("no audit records");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "audit",
            "--until",
            "1000000000",
        ],
        None,
    )
    .ok()
    .says("no audit records");
    let window = env
        .run(
            &[
                "--keyring-file",
                "k1.keys",
                "audit",
                "--user",
                alice,
                "--since",
                "2000-01-01",
                "--until",
                "2999-01-01T00:00:00+02:00",
            ],
            None,
        )
        .ok();
    assert_eq!(window.stdout.lines().count(), 4, "{window:#?}");
    env.run(
        &["--keyring-file", "k1.keys", "audit", "--since", "yesterday"],
        None,
    )
    .fails(2, "expected RFC 3339");
}
