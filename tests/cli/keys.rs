//! Users' keys: storing, listing and deleting, and secrets never taken as arguments.

use crate::common::Backend;
use crate::Env;

crate::per_backend!(
    put_list_delete_never_show_the_secret,
    a_secret_given_as_an_argument_is_refused_and_not_echoed,
);

// The same through PgBouncer, in transaction and in session mode.
crate::behind_poolers!(put_list_delete_never_show_the_secret,);

async fn put_list_delete_never_show_the_secret(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let alice = "alice@example.com";
    let secret = "sk-proj-alice-0123456789abcdef-0001";

    let put = env.put("k1.keys", alice, "OpenAI", secret);
    put.says("stored openai for the user (masked ")
        .says("fingerprint ");
    assert!(!put.stdout.contains(alice), "{put:#?}");

    // Exactly the piped text, less its one trailing newline.
    let vault = env.vault("k1.keys").await.unwrap();
    let stored = vault.get(alice, "openai").await.unwrap().unwrap();
    assert_eq!(stored.expose_secret(), secret);
    let masked = vault.list(alice).await.unwrap()[0].masked.clone();
    let fingerprint = vault.fingerprint(secret);
    put.says(&masked).says(&fingerprint);

    // Windows line ending, and a second provider.
    let exa = env.secret("exa-alice-9876543210-zyxw");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "put",
            "--user",
            alice,
            "--provider",
            "exa",
        ],
        Some(&format!("{exa}\r\n")),
    )
    .ok();
    assert_eq!(
        vault
            .get(alice, "exa")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        exa
    );

    let list = env
        .run(
            &["--keyring-file", "k1.keys", "list", "--user", alice],
            None,
        )
        .ok();
    list.says("provider")
        .says("masked")
        .says("fingerprint")
        .says(&masked)
        .says("never");
    assert_eq!(list.stdout.lines().count(), 3, "{list:#?}");
    assert!(list.stdout.lines().nth(1).unwrap().starts_with("exa "));

    // Replacing says so.
    env.put(
        "k1.keys",
        alice,
        "openai",
        "sk-proj-alice-0123456789abcdef-0002",
    )
    .says("replaced openai for the user");

    // An empty standard input is refused, and nothing changes.
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "put",
            "--user",
            alice,
            "--provider",
            "gemini",
        ],
        Some(""),
    )
    .fails(1, "no secret on standard input");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "put",
            "--user",
            alice,
            "--provider",
            "gemini",
        ],
        None,
    )
    .fails(1, "no secret");
    assert!(vault.get(alice, "gemini").await.unwrap().is_none());

    // Delete one, then all; other users are untouched.
    env.put("k1.keys", "bob", "openai", "sk-proj-bob-0123456789abcdef");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "delete",
            "--user",
            alice,
            "--provider",
            "openai",
        ],
        None,
    )
    .ok()
    .says("deleted openai");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "delete",
            "--user",
            alice,
            "--provider",
            "openai",
        ],
        None,
    )
    .ok()
    .says("nothing deleted");
    env.run(
        &["--keyring-file", "k1.keys", "delete", "--user", alice],
        None,
    )
    .fails(2, "--provider");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "delete",
            "--user",
            alice,
            "--provider",
            "exa",
            "--all",
        ],
        None,
    )
    .fails(2, "cannot be used with");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "delete",
            "--user",
            alice,
            "--all",
        ],
        None,
    )
    .ok()
    .says("deleted 1 key of the user");
    env.run(
        &["--keyring-file", "k1.keys", "list", "--user", alice],
        None,
    )
    .ok()
    .says("no keys stored for this user");
    assert_eq!(vault.list("bob").await.unwrap().len(), 1);
}

async fn a_secret_given_as_an_argument_is_refused_and_not_echoed(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let secret = env.secret("sk-proj-typed-on-the-command-line-42");
    let secret = secret.as_str();
    let base = [
        "--keyring-file",
        "k1.keys",
        "put",
        "--user",
        "alice",
        "--provider",
        "openai",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        // Standard input holds another secret: it must not be read either.
        env.run(&args, Some("sk-from-stdin-never-used-000000"))
    };
    with(&[secret]).fails(2, "unexpected argument");
    with(&["--", secret]).fails(2, "unexpected argument");
    with(&["--secret", secret]).fails(2, "unexpected argument");
    with(&[&format!("--secret={secret}")]).fails(2, "unexpected argument");
    with(&["--expires-in", secret]).fails(2, "invalid value for '--expires-in");
    env.run(&["--keyring-file", "k1.keys", secret], None)
        .fails(2, "unrecognized subcommand");
    // Nothing was stored (the vault is opened only after the command line parses).
    let vault = env.vault("k1.keys").await.unwrap();
    assert!(vault.list("alice").await.unwrap().is_empty());
}
