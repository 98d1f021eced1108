//! Errors: a wrong keyring and bad input.

use crate::common::Backend;
use crate::Env;

crate::per_backend!(wrong_keyring_and_bad_input_fail_clearly,);

async fn wrong_keyring_and_bad_input_fail_clearly(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    env.keygen("k1", "other.keys");
    env.put(
        "k1.keys",
        "alice",
        "openai",
        "sk-proj-alice-errors-0123456789",
    );

    // A keyring that did not seal this database.
    env.run(
        &["--keyring-file", "other.keys", "list", "--user", "alice"],
        None,
    )
    .fails(1, "the master keyring cannot read this database");
    // No keyring, an unreadable one, and a malformed one (not echoed).
    env.run(&["list", "--user", "alice"], None)
        .fails(1, "no master keyring");
    env.run(
        &["--keyring-file", "missing.keys", "list", "--user", "alice"],
        None,
    )
    .fails(1, "could not be read");
    let junk = env.secret("k1:bm90LWEtcmVhbC1rZXktYnV0LXNlY3JldC10ZXh0");
    std::fs::write(env.path("junk.keys"), format!("{junk}\n")).unwrap();
    env.run(
        &["--keyring-file", "junk.keys", "list", "--user", "alice"],
        None,
    )
    .fails(1, "invalid master keyring");
    let junk_env = env.secret("k1:c2VjcmV0LWZyb20tdGhlLWVudmlyb25tZW50");
    env.run_with_env(
        &["list", "--user", "alice"],
        None,
        &[("BYOK_MASTER_KEYS", &junk_env)],
    )
    .fails(1, "BYOK_MASTER_KEYS");

    // The keyring from the environment works like the file.
    let text = std::fs::read_to_string(env.path("k1.keys")).unwrap();
    env.run_with_env(
        &["list", "--user", "alice"],
        None,
        &[("BYOK_MASTER_KEYS", &text)],
    )
    .ok()
    .says("openai");

    // Database URLs: none, unsupported, unreachable; a password is never shown.
    env.run_with_env(
        &["--keyring-file", "k1.keys", "usage"],
        None,
        &[("BYOK_DATABASE_URL", "")],
    )
    .fails(1, "no database");
    let password = env.secret("hunter2-db-password");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "--database",
            &format!("mysql://admin:{password}@127.0.0.1/keys"),
            "usage",
        ],
        None,
    )
    .fails(1, "unsupported database URL");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "--database",
            "sqlite:/nonexistent-dir/keys.db",
            "usage",
        ],
        None,
    )
    .fails(1, "could not open the database");
    // A port nobody listens on (the first of the range `.ci/test` never uses).
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "--database",
            &format!("postgres://admin:{password}@127.0.0.1:9/keys"),
            "usage",
        ],
        None,
    )
    .fails(1, "could not open the database");
    // Bad values reach the library's checks, whose messages name no value.
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "--actor",
            "not an actor",
            "usage",
        ],
        None,
    )
    .fails(1, "invalid audit actor");
    let put = |provider: &str| {
        env.run(
            &[
                "--keyring-file",
                "k1.keys",
                "put",
                "--user",
                "alice",
                "--provider",
                provider,
            ],
            Some("sk-proj-never-stored-0123456789"),
        )
    };
    env.secret("sk-proj-never-stored-0123456789");
    put("not a provider").fails(1, "invalid provider name");
    // The `help` output is not an error.
    env.run(&["--help"], None).ok().says("Usage: tower-byok");
    env.run(&["put", "--help"], None)
        .ok()
        .says("never an argument");
}
