//! Team keys and the platform fallback, on both backends: the chain from the user's own
//! key to the team's to the platform's, each fall-through and each fail-closed case, a
//! user named like a team, and a team key revoked through another vault with its own
//! pool and cache.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{keyring, Backend, TestDb};
use tower_byok::{AuditAction, ErrorKind, KeySource, Owner, TeamPolicy, UserKeys, Vault};

const POLL: Duration = Duration::from_millis(100);
/// Generous: the measured figures belong in BENCHMARKS.md, not here.
const BOUND: Duration = Duration::from_secs(5);

/// `(secret, source)` of each provider of a key set, for whole-set comparisons.
fn served(keys: &UserKeys) -> Vec<(&str, &str, KeySource)> {
    keys.iter()
        .map(|k| (k.provider(), k.expose_secret(), k.source()))
        .collect()
}

/// Alice (a member of acme) holds an openai key; acme holds openai and gemini; the
/// platform holds openai, gemini and exa.
async fn seed(vault: &Vault) {
    vault
        .put("alice", "openai", "sk-alice-own-0001")
        .await
        .unwrap();
    let acme = Owner::team("acme");
    vault
        .put_for(acme, "openai", "sk-acme-team-0001")
        .await
        .unwrap();
    vault
        .put_for(acme, "gemini", "AIza-acme-team-0001")
        .await
        .unwrap();
    let platform = Owner::platform();
    vault
        .put_for(platform, "openai", "sk-platform-0001")
        .await
        .unwrap();
    vault
        .put_for(platform, "gemini", "AIza-platform-0001")
        .await
        .unwrap();
    vault
        .put_for(platform, "exa", "exa-platform-0001")
        .await
        .unwrap();
}

async fn chain_falls_through_in_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open_teams(keyring(), true, POLL).await;
    seed(&vault).await;

    // 1. own key, 2. team's, 3. platform's, 4. nothing.
    let keys = vault.keys_for_member("alice", Some("acme")).await.unwrap();
    assert_eq!(
        served(&keys),
        [
            ("exa", "exa-platform-0001", KeySource::Platform),
            ("gemini", "AIza-acme-team-0001", KeySource::Team),
            ("openai", "sk-alice-own-0001", KeySource::Database),
        ]
    );
    assert!(!keys.contains("mistral"));

    // Without a team: own key, then the platform's.
    let keys = vault.keys_for_member("alice", None).await.unwrap();
    assert_eq!(
        served(&keys),
        [
            ("exa", "exa-platform-0001", KeySource::Platform),
            ("gemini", "AIza-platform-0001", KeySource::Platform),
            ("openai", "sk-alice-own-0001", KeySource::Database),
        ]
    );

    // The team's policy: only its keys serve its members.
    assert_eq!(
        vault.team_policy("acme").await.unwrap(),
        TeamPolicy::MembersKeysFirst
    );
    vault
        .set_team_policy("acme", TeamPolicy::TeamKeysOnly)
        .await
        .unwrap();
    assert_eq!(
        vault.team_policy("acme").await.unwrap(),
        TeamPolicy::TeamKeysOnly
    );
    let keys = vault.keys_for_member("alice", Some("acme")).await.unwrap();
    assert_eq!(
        keys.get("openai").map(|k| (k.expose_secret(), k.source())),
        Some(("sk-acme-team-0001", KeySource::Team))
    );
    vault
        .set_team_policy("acme", TeamPolicy::MembersKeysFirst)
        .await
        .unwrap();

    // Expired keys count as absent, at each level.
    let past = SystemTime::now() - Duration::from_secs(1);
    vault
        .set_expiry("alice", "openai", Some(past))
        .await
        .unwrap();
    let keys = vault.keys_for_member("alice", Some("acme")).await.unwrap();
    assert_eq!(keys.get("openai").unwrap().source(), KeySource::Team);
    assert!(vault
        .set_expiry_for(Owner::team("acme"), "openai", Some(past))
        .await
        .unwrap());
    let keys = vault.keys_for_member("alice", Some("acme")).await.unwrap();
    assert_eq!(keys.get("openai").unwrap().source(), KeySource::Platform);
    vault
        .set_expiry_for(Owner::platform(), "openai", Some(past))
        .await
        .unwrap();
    let keys = vault.keys_for_member("alice", Some("acme")).await.unwrap();
    assert!(!keys.contains("openai"), "every level expired: absent");

    // A deleted team key falls through to the platform's.
    assert!(vault
        .delete_for(Owner::team("acme"), "gemini")
        .await
        .unwrap());
    let keys = vault.keys_for_member("alice", Some("acme")).await.unwrap();
    assert_eq!(keys.get("gemini").unwrap().source(), KeySource::Platform);

    // The platform fallback is off unless the vault is told: the same database, another
    // vault, no platform key.
    let strict = db.open_teams(keyring(), false, POLL).await;
    let keys = strict.keys_for_member("alice", Some("acme")).await.unwrap();
    assert!(keys.iter().all(|k| k.source() != KeySource::Platform));
    assert!(!keys.contains("exa"));
    // And a teamless user on it costs no more than keys_for: the same set.
    assert_eq!(
        served(&strict.keys_for_member("alice", None).await.unwrap()),
        served(&strict.keys_for("alice").await.unwrap())
    );
}

async fn fail_closed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open_teams(keyring(), true, POLL).await;
    seed(&vault).await;

    // A team key that exists but does not open (moved from another provider) fails the
    // call: never the platform's key in its place, for any provider.
    db.exec(
        "UPDATE byok_keys SET sealed = (SELECT sealed FROM byok_keys \
         WHERE owner_kind = 'team' AND user_id = 'acme' AND provider = 'openai') \
         WHERE owner_kind = 'team' AND user_id = 'acme' AND provider = 'gemini'",
    )
    .await;
    let err = vault
        .keys_for_member("alice", Some("acme"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decrypt);
    // Not even when the member's own key would have won for that provider's sibling.
    vault
        .put("alice", "gemini", "AIza-alice-own-0001")
        .await
        .unwrap();
    assert_eq!(
        vault
            .keys_for_member("alice", Some("acme"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Decrypt
    );
    vault.delete("alice", "gemini").await.unwrap();
    // Users outside the team are not affected.
    assert!(vault.keys_for_member("bob", None).await.is_ok());
    vault
        .put_for(Owner::team("acme"), "gemini", "AIza-acme-team-0002")
        .await
        .unwrap();
    assert!(vault.keys_for_member("alice", Some("acme")).await.is_ok());

    // The member's own key does not open: an error, never the team's key.
    db.exec(
        "UPDATE byok_keys SET sealed = (SELECT sealed FROM byok_keys \
         WHERE owner_kind = 'team' AND user_id = 'acme' AND provider = 'openai') \
         WHERE owner_kind = 'user' AND user_id = 'alice' AND provider = 'openai'",
    )
    .await;
    vault.forget_cached("alice");
    assert_eq!(
        vault
            .keys_for_member("alice", Some("acme"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Decrypt
    );
    vault
        .put("alice", "openai", "sk-alice-own-0002")
        .await
        .unwrap();

    // A platform key that does not open fails the call too, when the fallback is on.
    db.exec(
        "UPDATE byok_keys SET sealed = (SELECT sealed FROM byok_keys \
         WHERE owner_kind = 'platform' AND provider = 'openai') \
         WHERE owner_kind = 'platform' AND provider = 'exa'",
    )
    .await;
    // Raw SQL reaches the cached platform entry through the change feed.
    eventually_fails(&vault, "bob", None, ErrorKind::Decrypt).await;
    vault
        .put_for(Owner::platform(), "exa", "exa-platform-0002")
        .await
        .unwrap();

    // A team row under a master key the keyring lacks: an error, not the platform's.
    db.exec(
        "UPDATE byok_keys SET key_id = 'k9' \
         WHERE owner_kind = 'team' AND user_id = 'acme' AND provider = 'gemini'",
    )
    .await;
    eventually_fails(&vault, "alice", Some("acme"), ErrorKind::UnknownMasterKey).await;
    db.exec("UPDATE byok_keys SET key_id = 'k1' WHERE key_id = 'k9'")
        .await;
    let start = Instant::now();
    while vault.keys_for_member("alice", Some("acme")).await.is_err() {
        assert!(start.elapsed() < BOUND, "the repaired row was not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The team's keys cannot be loaded (its policy table is gone): a store error (503
    // in the layer), never the platform's key. A vault with nothing cached yet, since a
    // fresh cache entry is served without the database.
    db.exec("ALTER TABLE byok_team_policies RENAME TO byok_team_policies_gone")
        .await;
    let vault = db.open_teams(keyring(), true, POLL).await;
    assert_eq!(
        vault
            .keys_for_member("alice", Some("acme"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Store
    );
    // A user acting for no team is still served, platform included.
    let keys = vault.keys_for_member("bob", None).await.unwrap();
    assert_eq!(keys.get("exa").unwrap().source(), KeySource::Platform);
}

/// Waits (within the feed's bound) until `user` acting for `team` fails, then checks
/// that it fails with `kind`.
async fn eventually_fails(vault: &Vault, user: &str, team: Option<&str>, kind: ErrorKind) {
    let start = Instant::now();
    loop {
        match vault.keys_for_member(user, team).await {
            Err(e) => {
                assert_eq!(e.kind(), kind);
                return;
            }
            Ok(_) => assert!(start.elapsed() < BOUND, "the tampered row was not seen"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_user_named_like_a_team_sees_nothing_of_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open_teams(keyring(), false, POLL).await;
    vault
        .put_for(Owner::team("acme"), "openai", "sk-acme-team-0001")
        .await
        .unwrap();
    vault
        .put("acme", "gemini", "AIza-user-acme-0001")
        .await
        .unwrap();
    for user in ["team:acme", "acme", "team/acme"] {
        let keys = vault.keys_for_member(user, None).await.unwrap();
        assert!(!keys.contains("openai"), "user {user:?}");
        assert!(vault.get(user, "openai").await.unwrap().is_none());
    }
    // The user "acme" and the team "acme" are two owners, listed apart.
    assert_eq!(vault.list("acme").await.unwrap()[0].provider, "gemini");
    let team = vault.list_for(Owner::team("acme")).await.unwrap();
    assert_eq!(team.len(), 1);
    assert_eq!(team[0].provider, "openai");
    // A member of team acme gets the team's key, not user acme's.
    let keys = vault.keys_for_member("alice", Some("acme")).await.unwrap();
    assert_eq!(
        served(&keys),
        [("openai", "sk-acme-team-0001", KeySource::Team)]
    );
    // A team named like a user's id prefix is another team.
    let keys = vault
        .keys_for_member("alice", Some("team:acme"))
        .await
        .unwrap();
    assert!(keys.is_empty());
    // Deleting the user's keys leaves the team's.
    vault.delete_all("acme").await.unwrap();
    assert_eq!(vault.list_for(Owner::team("acme")).await.unwrap().len(), 1);

    // The audit trail names the team by its own reference, not user acme's.
    let log = vault.audit_log(None, None).await.unwrap();
    let team_record = log.iter().find(|r| r.provider == "openai").unwrap();
    assert_ne!(team_record.user_ref, vault.user_ref("acme"));
    assert_ne!(team_record.user_ref, vault.user_ref("team:acme"));
    assert!(vault
        .audit_trail("acme")
        .await
        .unwrap()
        .iter()
        .all(|r| r.provider == "gemini"));

    // Bad team ids are refused before anything is read or written.
    for bad in ["", " acme", "ac\u{0}me"] {
        assert_eq!(
            vault
                .keys_for_member("alice", Some(bad))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidTeamId
        );
        assert_eq!(
            vault
                .put_for(Owner::team(bad), "openai", "sk-x-0001")
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidTeamId
        );
    }
    let policy = vault
        .set_team_policy("acme", TeamPolicy::TeamKeysOnly)
        .await;
    assert!(policy.is_ok());
    let last = vault.audit_log(None, None).await.unwrap().pop().unwrap();
    assert_eq!(last.action, AuditAction::PolicyChange);
}

/// Another instance (its own pool, cache and feed) revokes a team key and changes the
/// policy: every member of the team stops being served it within the feed's bound.
async fn a_team_key_revoked_elsewhere_stops_for_every_member(backend: Backend) {
    let db = TestDb::new(backend).await;
    let serving = db.open_teams(keyring(), true, POLL).await;
    let admin = db.open_teams(keyring(), false, POLL).await;
    admin
        .put_for(Owner::team("acme"), "openai", "sk-acme-team-0001")
        .await
        .unwrap();
    admin
        .put("carol", "openai", "sk-carol-own-0001")
        .await
        .unwrap();
    let members = ["alice", "bob", "carol"];
    for m in members {
        assert!(serving
            .keys_for_member(m, Some("acme"))
            .await
            .unwrap()
            .contains("openai"));
    }

    assert!(admin
        .delete_for(Owner::team("acme"), "openai")
        .await
        .unwrap());
    let start = Instant::now();
    for m in ["alice", "bob"] {
        loop {
            let keys = serving.keys_for_member(m, Some("acme")).await.unwrap();
            if !keys.contains("openai") {
                break;
            }
            assert!(
                start.elapsed() < BOUND,
                "{m} still served the revoked team key"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Carol's own key is untouched.
    let keys = serving
        .keys_for_member("carol", Some("acme"))
        .await
        .unwrap();
    assert_eq!(
        keys.get("openai").unwrap().expose_secret(),
        "sk-carol-own-0001"
    );

    // A policy change made elsewhere reaches the members too.
    admin
        .put_for(Owner::team("acme"), "openai", "sk-acme-team-0002")
        .await
        .unwrap();
    admin
        .set_team_policy("acme", TeamPolicy::TeamKeysOnly)
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let keys = serving
            .keys_for_member("carol", Some("acme"))
            .await
            .unwrap();
        if keys.get("openai").unwrap().expose_secret() == "sk-acme-team-0002" {
            break;
        }
        assert!(start.elapsed() < BOUND, "the policy change was not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A team's change drops the team's one cache entry and no member's: members' own keys
/// are not loaded again, while every member sees the change. Concurrent misses of one
/// team share one load.
async fn a_team_change_reaches_members_without_reloading_them(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (vault, probe) = db.open_probed(keyring(), common::Opts::default()).await;
    vault
        .put_for(Owner::team("acme"), "openai", "sk-acme-team-0001")
        .await
        .unwrap();
    let members: Vec<String> = (0..20).map(|i| format!("member-{i}")).collect();
    for m in &members {
        vault
            .put(m, "gemini", "AIza-member-own-0001")
            .await
            .unwrap();
    }

    // Concurrent first requests of every member: one load per member, one for the team.
    let hold = probe.hold_next_owner_load();
    let tasks: Vec<_> = members
        .iter()
        .map(|m| {
            let (vault, m) = (vault.clone(), m.clone());
            tokio::spawn(async move { vault.keys_for_member(&m, Some("acme")).await })
        })
        .collect();
    let start = Instant::now();
    while probe.owner_loads() < 1 || probe.loads() < members.len() {
        assert!(start.elapsed() < BOUND, "the loads did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    hold.send(()).unwrap();
    for t in tasks {
        let keys = t.await.unwrap().unwrap();
        assert_eq!(keys.get("openai").unwrap().source(), KeySource::Team);
    }
    assert_eq!(probe.owner_loads(), 1, "one load for the whole team");
    let user_loads = probe.loads();
    assert_eq!(user_loads, members.len());

    // Hits: no load at all.
    for m in &members {
        vault.keys_for_member(m, Some("acme")).await.unwrap();
    }
    assert_eq!((probe.loads(), probe.owner_loads()), (user_loads, 1));

    // The team's key is replaced (a probed store has no change feed, so through this
    // vault; the feed's path is `a_team_key_revoked_elsewhere_stops_for_every_member`):
    // every member sees the new key, and no member's own keys are reloaded.
    vault
        .put_for(Owner::team("acme"), "openai", "sk-acme-team-0002")
        .await
        .unwrap();
    let start = Instant::now();
    for m in &members {
        loop {
            let keys = vault.keys_for_member(m, Some("acme")).await.unwrap();
            if keys.get("openai").unwrap().expose_secret() == "sk-acme-team-0002" {
                break;
            }
            assert!(start.elapsed() < BOUND, "{m} still served the old team key");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        probe.loads(),
        user_loads,
        "members' entries were left alone"
    );
    assert_eq!(probe.owner_loads(), 2, "the team was loaded once more");
}

/// Master-key rotation covers every owner: rewrap re-seals users', teams' and the
/// platform's rows (each under its own derivation), verify opens them all, and the old
/// key can then be retired; every key is still served as before.
async fn rotation_covers_teams_and_the_platform(backend: Backend) {
    let db = TestDb::new(backend).await;
    let old = db.open_teams(keyring(), true, POLL).await;
    seed(&old).await;
    // A user and a team with the same id, to show the pages keep them apart.
    old.put("acme", "openai", "sk-user-acme-0001")
        .await
        .unwrap();
    let before = old.keys_for_member("alice", Some("acme")).await.unwrap();
    let before = served(&before)
        .into_iter()
        .map(|(p, s, src)| (p.to_owned(), s.to_owned(), src))
        .collect::<Vec<_>>();
    drop(old);

    let rotated =
        tower_byok::Keyring::new(common::master("k2", 9)).with_key(common::master("k1", 7));
    let vault = db.open_teams(rotated.unwrap(), true, POLL).await;
    // Pages of one row, so that paging crosses from users to teams to the platform.
    let report = vault.rewrap(1, |_| {}).await.unwrap();
    assert_eq!(report.resealed, 7, "{report:?}");
    assert!(report.failed.is_empty());
    let verified = vault.verify(|_| {}).await.unwrap();
    assert_eq!((verified.opened, verified.failed.len()), (7, 0));
    vault.retire_master_key("k1").await.unwrap();

    let only_new = db
        .open_teams(
            tower_byok::Keyring::new(common::master("k2", 9)),
            true,
            POLL,
        )
        .await;
    let after = only_new
        .keys_for_member("alice", Some("acme"))
        .await
        .unwrap();
    let after = served(&after)
        .into_iter()
        .map(|(p, s, src)| (p.to_owned(), s.to_owned(), src))
        .collect::<Vec<_>>();
    assert_eq!(after, before);
    assert_eq!(
        only_new
            .get("acme", "openai")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "sk-user-acme-0001"
    );
    // The team's rewrap is audited under the team's reference.
    let log = only_new.audit_log(None, None).await.unwrap();
    assert_eq!(
        log.iter()
            .filter(|r| r.action == AuditAction::Rewrap)
            .count(),
        7
    );
}

/// The housekeeping paths cover every owner: `purge_expired` sweeps teams' and the
/// platform's expired keys as users', `delete_all_for` deletes all of one owner's keys
/// and nobody else's, each change is in the owner's audit trail under its keyed
/// reference, and no log line at any level holds the team's id.
async fn housekeeping_covers_teams_and_the_platform(backend: Backend) {
    let logs = common::logs::capture_global();
    let db = TestDb::new(backend).await;
    let vault = db.open_teams(keyring(), true, POLL).await;
    let team_id = "team-7f3a-housekeeping";
    let team = Owner::team(team_id);
    vault
        .put("alice", "openai", "sk-alice-own-0001")
        .await
        .unwrap();
    vault
        .put("alice", "gemini", "AIza-alice-own-0001")
        .await
        .unwrap();
    vault
        .put(team_id, "openai", "sk-user-named-like-it-0001")
        .await
        .unwrap();
    vault.put_for(team, "openai", "sk-team-0001").await.unwrap();
    vault
        .put_for(team, "gemini", "AIza-team-0001")
        .await
        .unwrap();
    vault.put_for(team, "exa", "exa-team-0001").await.unwrap();
    vault
        .put_for(Owner::platform(), "openai", "sk-platform-0001")
        .await
        .unwrap();
    vault
        .put_for(Owner::platform(), "exa", "exa-platform-0001")
        .await
        .unwrap();
    // Served (and so cached) before anything expires.
    let keys = vault.keys_for_member("alice", Some(team_id)).await.unwrap();
    assert_eq!(keys.get("exa").unwrap().source(), KeySource::Team);

    let past = SystemTime::now() - Duration::from_secs(1);
    vault
        .set_expiry("alice", "gemini", Some(past))
        .await
        .unwrap();
    assert!(vault
        .set_expiry_for(team, "openai", Some(past))
        .await
        .unwrap());
    assert!(vault.set_expiry_for(team, "exa", Some(past)).await.unwrap());
    assert!(vault
        .set_expiry_for(Owner::platform(), "exa", Some(past))
        .await
        .unwrap());
    assert_eq!(vault.purge_expired().await.unwrap(), 4);
    assert_eq!(
        vault.purge_expired().await.unwrap(),
        0,
        "nothing left to purge"
    );
    let left =
        |infos: Vec<tower_byok::KeyInfo>| infos.into_iter().map(|i| i.provider).collect::<Vec<_>>();
    assert_eq!(left(vault.list("alice").await.unwrap()), ["openai"]);
    assert_eq!(left(vault.list_for(team).await.unwrap()), ["gemini"]);
    assert_eq!(
        left(vault.list_for(Owner::platform()).await.unwrap()),
        ["openai"]
    );
    let trail = vault.audit_trail_for(team).await.unwrap();
    let purged: Vec<_> = trail
        .iter()
        .filter(|r| r.action == AuditAction::Purge)
        .map(|r| r.provider.as_str())
        .collect();
    assert_eq!(purged.len(), 2);
    assert!(purged.contains(&"openai") && purged.contains(&"exa"));
    assert!(trail.iter().all(|r| r.user_ref == vault.owner_ref(team)));
    assert_ne!(vault.owner_ref(team), vault.user_ref(team_id));
    let keys = vault.keys_for_member("alice", Some(team_id)).await.unwrap();
    assert!(!keys.contains("exa"), "the purged team key is not served");

    // All of the team's keys go, the policy and the user named like the team stay.
    vault
        .set_team_policy(team_id, TeamPolicy::TeamKeysOnly)
        .await
        .unwrap();
    assert_eq!(vault.delete_all_for(team).await.unwrap(), 1);
    assert_eq!(vault.delete_all_for(team).await.unwrap(), 0);
    assert!(vault.list_for(team).await.unwrap().is_empty());
    assert_eq!(
        vault.team_policy(team_id).await.unwrap(),
        TeamPolicy::TeamKeysOnly
    );
    assert_eq!(left(vault.list(team_id).await.unwrap()), ["openai"]);
    let keys = vault.keys_for_member("alice", Some(team_id)).await.unwrap();
    assert_eq!(
        served(&keys),
        [("openai", "sk-platform-0001", KeySource::Platform)],
        "team keys only, and the team has none: the platform's"
    );
    assert_eq!(vault.delete_all_for(Owner::platform()).await.unwrap(), 1);
    assert_eq!(vault.delete_all_for(Owner::user("alice")).await.unwrap(), 1);
    assert!(vault
        .keys_for_member("alice", Some(team_id))
        .await
        .unwrap()
        .is_empty());
    let deletes = vault
        .audit_trail_for(team)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == AuditAction::Delete)
        .count();
    assert_eq!(deletes, 1);
    assert_eq!(
        vault
            .delete_all_for(Owner::team(" bad"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidTeamId
    );

    // A load of the team that fails logs a warning, by kind and reference only.
    vault.put_for(team, "openai", "sk-team-0002").await.unwrap();
    db.exec(&format!(
        "UPDATE byok_keys SET key_id = 'k9' WHERE owner_kind = 'team' AND user_id = '{team_id}'"
    ))
    .await;
    eventually_fails(&vault, "alice", Some(team_id), ErrorKind::UnknownMasterKey).await;
    let text = logs.text();
    assert!(
        text.contains("loading an owner's keys failed"),
        "the warning was logged"
    );
    // The crate's lines (its targets are `tower_byok::...`); the test's own raw SQL above
    // names the team, as an operator's would.
    let leaks: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("tower_byok") && l.contains(team_id))
        .collect();
    assert!(leaks.is_empty(), "log lines hold the team id: {leaks:#?}");
}

per_backend!(
    housekeeping_covers_teams_and_the_platform,
    rotation_covers_teams_and_the_platform,
    a_team_change_reaches_members_without_reloading_them,
    chain_falls_through_in_order,
    fail_closed,
    a_user_named_like_a_team_sees_nothing_of_it,
    a_team_key_revoked_elsewhere_stops_for_every_member,
);

// The same through PgBouncer, in transaction and in session mode.
crate::behind_poolers!(
    rotation_covers_teams_and_the_platform,
    a_team_change_reaches_members_without_reloading_them,
    chain_falls_through_in_order,
    fail_closed,
    a_user_named_like_a_team_sees_nothing_of_it,
    a_team_key_revoked_elsewhere_stops_for_every_member,
);
