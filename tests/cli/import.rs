//! Legacy import.

use crate::common::Backend;
use crate::Env;

crate::per_backend!(
    import_is_a_dry_run_until_applied,
    import_users_json_and_onboarding_files,
);

async fn import_is_a_dry_run_until_applied(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let openai = env.secret("sk-proj-dev-import-0123456789");
    let exa = env.secret("exa-dev-import-0123456789");
    std::fs::write(
        env.path(".env"),
        format!("DEBUG=true\nexport OPENAI_API_KEY=\"{openai}\"\nEXA_API_KEY={exa} # mine\n"),
    )
    .unwrap();
    let ring = ["--keyring-file", "k1.keys"];
    let import = |extra: &[&str]| {
        let mut args = ring.to_vec();
        args.extend_from_slice(&["import", "env", "--user", "alice", ".env"]);
        args.extend_from_slice(extra);
        env.run(&args, None)
    };

    import(&[])
        .ok()
        .says("dry run")
        .says("line 2 (OPENAI_API_KEY)")
        .says("2 new")
        .says("--apply");
    let vault = env.vault("k1.keys").await.unwrap();
    assert!(
        vault.list("alice").await.unwrap().is_empty(),
        "a dry run wrote"
    );

    import(&["--replace-different"]).fails(2, "--apply");
    import(&["--apply"]).ok().says("2 added");
    assert_eq!(
        vault
            .get("alice", "exa")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        exa
    );
    assert_eq!(
        vault
            .get("alice", "openai")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        openai
    );
    import(&["--apply"]).ok().says("2 unchanged");

    // A different key in the file is a conflict unless replacing is asked for.
    let newer = env.secret("sk-proj-dev-import-newer-987654");
    std::fs::write(
        env.path(".env"),
        format!("OPENAI_API_KEY={newer}\nEXA_API_KEY={exa}\n"),
    )
    .unwrap();
    import(&[])
        .ok()
        .says("1 different")
        .says("--replace-different");
    import(&["--apply"]).ok().says("1 conflicts");
    import(&["--apply", "--remove-source"]).fails(1, "not removing the source file");
    import(&["--apply", "--replace-different", "--remove-source"])
        .ok()
        .says("1 replaced")
        .says("source removed");
    assert!(!env.path(".env").exists());
    assert_eq!(
        vault
            .get("alice", "openai")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        newer
    );
    let audit = env.run(&["--keyring-file", "k1.keys", "audit"], None).ok();
    audit.says(" import ");

    // A file that is not there.
    import(&[]).fails(1, "legacy import error");
}

async fn import_users_json_and_onboarding_files(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let a = env.secret("sk-proj-users-json-alice-01234");
    let b = env.secret("AIza-users-json-bob-0123456789");
    std::fs::write(
        env.path("users.json"),
        format!(
            r#"{{"users": {{"alice": {{"password": "x", "api_keys": {{"openai": "{a}"}}}},
                "bob": {{"api_keys": {{"GEMINI_API_KEY": "{b}"}}}}}}}}"#
        ),
    )
    .unwrap();
    let c = env.secret("exa-onboarding-carol-0123456789");
    std::fs::write(
        env.path("progress.json"),
        format!(r#"{{"steps": [{{"step_number": 1, "data": {{"api_keys": {{"exa": "{c}"}}}}}}]}}"#),
    )
    .unwrap();
    let ring = ["--keyring-file", "k1.keys"];
    let run = |extra: &[&str]| {
        let mut args = ring.to_vec();
        args.extend_from_slice(extra);
        env.run(&args, None)
    };

    run(&["import", "users-json", "users.json"])
        .ok()
        .says("2 new");
    run(&["import", "users-json", "users.json", "--apply"])
        .ok()
        .says("2 added");
    run(&["import", "onboarding", "progress.json"]).fails(2, "--user");
    run(&[
        "import",
        "onboarding",
        "--user",
        "carol",
        "progress.json",
        "--apply",
    ])
    .ok()
    .says("1 added");

    let vault = env.vault("k1.keys").await.unwrap();
    for (user, provider, secret) in [
        ("alice", "openai", &a),
        ("bob", "gemini", &b),
        ("carol", "exa", &c),
    ] {
        let key = vault.get(user, provider).await.unwrap().unwrap();
        assert_eq!(key.expose_secret(), secret.as_str());
    }
    assert!(env.path("users.json").exists() && env.path("progress.json").exists());
}
