//! Teams' and the platform's keys through the binary: `--team` and `--platform` on put,
//! list, expire and delete (each exclusive of `--user` and of each other), and
//! `team-policy`. Output names the owner by its kind, never by its id.

use tower_byok::{KeySource, Owner, TeamPolicy};

use crate::common::Backend;
use crate::Env;

crate::per_backend!(
    team_and_platform_keys_through_the_binary,
    an_owner_is_exactly_one_of_user_team_and_platform,
);

// The same through PgBouncer, in transaction and in session mode.
crate::behind_poolers!(team_and_platform_keys_through_the_binary,);

const K: &[&str] = &["--keyring-file", "k1.keys"];

fn args<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    K.iter().copied().chain(rest.iter().copied()).collect()
}

async fn team_and_platform_keys_through_the_binary(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let team = "acme-workspace-0042";
    let team_secret = env.secret("sk-team-acme-0123456789abcdef-0001");
    let platform_secret = env.secret("sk-platform-0123456789abcdef-0001");
    let gemini = env.secret("AIza-team-acme-0123456789-0001");

    let put = env
        .run(
            &args(&["put", "--team", team, "--provider", "OpenAI"]),
            Some(&format!("{team_secret}\n")),
        )
        .ok();
    put.says("stored openai for the team (masked ");
    env.run(
        &args(&["put", "--team", team, "--provider", "gemini"]),
        Some(&format!("{gemini}\n")),
    )
    .ok()
    .says("stored gemini for the team");
    env.run(
        &args(&[
            "put",
            "--platform",
            "--provider",
            "openai",
            "--expires-in",
            "1h",
        ]),
        Some(&format!("{platform_secret}\n")),
    )
    .ok()
    .says("stored openai for the platform (masked ")
    .says(", expires ");

    // The library sees them as the team's and the platform's, and a member is served
    // the team's key.
    let vault = env.vault("k1.keys").await.unwrap();
    let keys = vault.keys_for_member("alice", Some(team)).await.unwrap();
    let openai = keys.get("openai").unwrap();
    assert_eq!(
        (openai.expose_secret(), openai.source()),
        (team_secret.as_str(), KeySource::Team)
    );
    assert!(vault.list(team).await.unwrap().is_empty(), "no user's keys");
    let platform = vault.list_for(Owner::platform()).await.unwrap();
    assert_eq!(platform.len(), 1);

    let list = env.run(&args(&["list", "--team", team]), None).ok();
    let masked = &vault.list_for(Owner::team(team)).await.unwrap()[0].masked;
    list.says("gemini").says("openai").says(masked);
    env.run(&args(&["list", "--platform"]), None)
        .ok()
        .says("openai");
    env.run(&args(&["list", "--team", "nobody-team"]), None)
        .ok()
        .says("no keys stored for this team");

    // Expiry, on each kind.
    env.run(
        &args(&[
            "expire",
            "--team",
            team,
            "--provider",
            "gemini",
            "--in",
            "2h",
        ]),
        None,
    )
    .ok()
    .says("gemini of the team now expires at ");
    env.run(
        &args(&["expire", "--platform", "--provider", "openai", "--never"]),
        None,
    )
    .ok()
    .says("openai of the platform now never expires");
    assert!(vault.list_for(Owner::platform()).await.unwrap()[0]
        .expires_at
        .is_none());
    env.run(
        &args(&["expire", "--team", team, "--provider", "exa", "--in", "1h"]),
        None,
    )
    .fails(1, "the team has no exa key: nothing to expire");

    // The policy: shown, set, shown again; the library agrees.
    env.run(&args(&["team-policy", "--team", team]), None)
        .ok()
        .says("the team's policy is members-keys");
    env.run(
        &args(&["team-policy", "--team", team, "--set", "team-keys-only"]),
        None,
    )
    .ok()
    .says("the team's policy set team-keys-only");
    assert_eq!(
        vault.team_policy(team).await.unwrap(),
        TeamPolicy::TeamKeysOnly
    );
    let trail = vault.audit_trail_for(Owner::team(team)).await.unwrap();
    assert_eq!(trail.len(), 4, "two puts, an expiry, the policy: {trail:?}");
    assert!(trail.iter().all(|r| r.actor == "cli"));
    // The CLI's audit of the team: its records only, by reference, never its id.
    let audit = env.run(&args(&["audit", "--team", team]), None).ok();
    let team_ref = vault.owner_ref(Owner::team(team));
    assert_eq!(audit.stdout.matches(&team_ref).count(), 4, "{audit:#?}");
    audit.says("policy");
    assert!(!audit.stdout.contains(team));
    env.run(&args(&["audit", "--platform"]), None)
        .ok()
        .says(&vault.owner_ref(Owner::platform()));
    env.run(
        &args(&["team-policy", "--team", team, "--set", "members-keys"]),
        None,
    )
    .ok();
    assert_eq!(
        vault.team_policy(team).await.unwrap(),
        TeamPolicy::MembersKeysFirst
    );

    // Deleting: one key, then all; the platform's separately.
    env.run(
        &args(&["delete", "--team", team, "--provider", "gemini"]),
        None,
    )
    .ok()
    .says("deleted gemini for the team");
    env.run(&args(&["delete", "--team", team, "--all"]), None)
        .ok()
        .says("deleted 1 key of the team");
    assert!(vault.list_for(Owner::team(team)).await.unwrap().is_empty());
    assert_eq!(vault.list_for(Owner::platform()).await.unwrap().len(), 1);
    env.run(&args(&["delete", "--platform", "--all"]), None)
        .ok()
        .says("deleted 1 key of the platform");

    // Purge covers teams: an expired team key is swept.
    env.run(
        &args(&[
            "put",
            "--team",
            team,
            "--provider",
            "exa",
            "--expires-in",
            "1s",
        ]),
        Some("exa-team-acme-0123456789-0001\n"),
    )
    .ok();
    env.secret("exa-team-acme-0123456789-0001");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.run(&args(&["purge-expired"]), None)
        .ok()
        .says("purged 1 expired key");

    // No output ever named the team.
    for out in [
        env.run(&args(&["list", "--team", team]), None),
        env.run(&args(&["team-policy", "--team", team]), None),
    ] {
        assert!(!out.stdout.contains(team) && !out.stderr.contains(team));
    }
}

async fn an_owner_is_exactly_one_of_user_team_and_platform(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    for owner in [
        &["--user", "alice", "--team", "acme"][..],
        &["--user", "alice", "--platform"],
        &["--team", "acme", "--platform"],
    ] {
        let mut list = vec!["list"];
        list.extend_from_slice(owner);
        let out = env.run(&args(&list), None);
        out.fails(2, "cannot be used with");
    }
    env.run(&args(&["list"]), None)
        .fails(2, "the following required arguments were not provided");
    env.run(&args(&["audit", "--user", "alice", "--team", "acme"]), None)
        .fails(2, "cannot be used with");
    // A bad team id: a typed error that does not repeat it.
    let out = env
        .run(&args(&["list", "--team", " acme"]), None)
        .fails(1, "team id");
    assert!(!out.stderr.contains(" acme"));
    env.run(
        &args(&["team-policy", "--team", "acme", "--set", "sometimes"]),
        None,
    )
    .fails(2, "invalid value for '--set <POLICY>'");
}
