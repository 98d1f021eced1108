//! Keys of users, teams and the platform: storing, listing, deleting, setting when they
//! expire; and teams' policies. Messages name the owner by its kind only ("the user",
//! "the team"), never by its id.

use std::time::{Duration, SystemTime};

use tower_byok::{AuditAction, Owner, TeamPolicy, Vault};

use super::plural;
use crate::cli::PolicyArg;
use crate::{secret, table, time, CmdResult, Fail};

/// An owner and how messages name it: `--user`, `--team` or `--platform`.
pub(super) type Named<'a> = (Owner<'a>, &'static str);

pub(super) async fn put(
    vault: &Vault,
    (owner, who): Named<'_>,
    provider: &str,
    expires_in: Option<Duration>,
) -> CmdResult {
    let provider = provider.trim().to_ascii_lowercase();
    let secret = secret::read(&format!("{provider} key for {who} (typing is not shown): "))?;
    let action = match expires_in {
        Some(after) => {
            vault
                .put_expiring_for(owner, &provider, &secret, SystemTime::now() + after)
                .await?
        }
        None => vault.put_for(owner, &provider, &secret).await?,
    };
    drop(secret);
    let verb = if action == AuditAction::Replace {
        "replaced"
    } else {
        "stored"
    };
    let listed = vault.list_for(owner).await?;
    match listed.iter().find(|k| k.provider == provider) {
        Some(info) => {
            let expiry = match info.expires_at {
                Some(at) => format!(", expires {}", time::format(at)),
                None => String::new(),
            };
            println!(
                "{verb} {} for {who} (masked {}, fingerprint {}{expiry})",
                info.provider, info.masked, info.fingerprint
            );
        }
        None => println!("{verb} {provider} for {who}"),
    }
    Ok(())
}

pub(super) async fn list(vault: &Vault, (owner, who): Named<'_>) -> CmdResult {
    let keys = vault.list_for(owner).await?;
    if keys.is_empty() {
        println!("no keys stored for {}", who.replacen("the ", "this ", 1));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let expires = match k.expires_at {
                None => "never".to_owned(),
                Some(at) if k.is_expired() => format!("{} (expired)", time::format(at)),
                Some(at) => time::format(at),
            };
            vec![
                k.provider.clone(),
                k.masked.clone(),
                k.fingerprint.clone(),
                k.master_key_id.clone(),
                time::format(k.created_at),
                time::format(k.updated_at),
                expires,
            ]
        })
        .collect();
    table::print(
        &[
            "provider",
            "masked",
            "fingerprint",
            "key id",
            "created",
            "updated",
            "expires",
        ],
        &rows,
    );
    Ok(())
}

pub(super) async fn delete(
    vault: &Vault,
    (owner, who): Named<'_>,
    provider: Option<&str>,
    all: bool,
) -> CmdResult {
    match provider {
        Some(provider) if !all => {
            let provider = provider.trim().to_ascii_lowercase();
            if vault.delete_for(owner, &provider).await? {
                println!("deleted {provider} for {who}");
            } else {
                println!("{who} has no {provider} key: nothing deleted");
            }
        }
        _ => {
            let deleted = vault.delete_all_for(owner).await?;
            println!(
                "deleted {deleted} {} of {who}",
                plural(deleted, "key", "keys")
            );
        }
    }
    Ok(())
}

pub(super) async fn expire(
    vault: &Vault,
    (owner, who): Named<'_>,
    provider: &str,
    after: Option<Duration>,
) -> CmdResult {
    let provider = provider.trim().to_ascii_lowercase();
    let at = after.map(|after| SystemTime::now() + after);
    if !vault.set_expiry_for(owner, &provider, at).await? {
        return Err(Fail::new(format!(
            "{who} has no {provider} key: nothing to expire"
        )));
    }
    match (at, after) {
        (None, _) => println!("{provider} of {who} now never expires"),
        (Some(_), Some(after)) if after.is_zero() => println!(
            "{provider} of {who} has expired: it is no longer served once running \
             instances' cached entries expire (`tower-byok purge-expired` deletes it)"
        ),
        (Some(at), after) => println!(
            "{provider} of {who} now expires at {} (in {})",
            time::format(at),
            time::format_duration(after.unwrap_or_default())
        ),
    }
    Ok(())
}

/// Shows a team's policy, after setting it if `set` says so.
pub(super) async fn team_policy(vault: &Vault, team: &str, set: Option<PolicyArg>) -> CmdResult {
    if let Some(policy) = set {
        vault.set_team_policy(team, policy.into()).await?;
    }
    let shown = match vault.team_policy(team).await? {
        TeamPolicy::TeamKeysOnly => {
            "team-keys-only: only the team's keys (then the platform's) serve its members"
        }
        _ => "members-keys: a member's own key wins; the team's serves the providers the member has none for",
    };
    let verb = if set.is_some() { "set" } else { "is" };
    println!("the team's policy {verb} {shown}");
    Ok(())
}
