//! Users' keys: storing, listing, deleting, and setting when they expire.

use std::time::{Duration, SystemTime};

use tower_byok::{AuditAction, Vault};

use super::plural;
use crate::{secret, table, time, CmdResult, Fail};

pub(super) async fn put(
    vault: &Vault,
    user: &str,
    provider: &str,
    expires_in: Option<Duration>,
) -> CmdResult {
    let provider = provider.trim().to_ascii_lowercase();
    let secret = secret::read(&format!(
        "{provider} key for the user (typing is not shown): "
    ))?;
    let action = match expires_in {
        Some(after) => {
            vault
                .put_expiring(user, &provider, &secret, SystemTime::now() + after)
                .await?
        }
        None => vault.put(user, &provider, &secret).await?,
    };
    drop(secret);
    let verb = if action == AuditAction::Replace {
        "replaced"
    } else {
        "stored"
    };
    let listed = vault.list(user).await?;
    match listed.iter().find(|k| k.provider == provider) {
        Some(info) => {
            let expiry = match info.expires_at {
                Some(at) => format!(", expires {}", time::format(at)),
                None => String::new(),
            };
            println!(
                "{verb} {} for the user (masked {}, fingerprint {}{expiry})",
                info.provider, info.masked, info.fingerprint
            );
        }
        None => println!("{verb} {provider} for the user"),
    }
    Ok(())
}

pub(super) async fn list(vault: &Vault, user: &str) -> CmdResult {
    let keys = vault.list(user).await?;
    if keys.is_empty() {
        println!("no keys stored for this user");
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
    user: &str,
    provider: Option<&str>,
    all: bool,
) -> CmdResult {
    match provider {
        Some(provider) if !all => {
            let provider = provider.trim().to_ascii_lowercase();
            if vault.delete(user, &provider).await? {
                println!("deleted {provider} for the user");
            } else {
                println!("the user has no {provider} key: nothing deleted");
            }
        }
        _ => {
            let deleted = vault.delete_all(user).await?;
            println!(
                "deleted {deleted} {} of the user",
                plural(deleted, "key", "keys")
            );
        }
    }
    Ok(())
}

pub(super) async fn expire(
    vault: &Vault,
    user: &str,
    provider: &str,
    after: Option<Duration>,
) -> CmdResult {
    let provider = provider.trim().to_ascii_lowercase();
    let at = after.map(|after| SystemTime::now() + after);
    if !vault.set_expiry(user, &provider, at).await? {
        return Err(Fail::new(format!(
            "the user has no {provider} key: nothing to expire"
        )));
    }
    match (at, after) {
        (None, _) => println!("{provider} of the user now never expires"),
        (Some(_), Some(after)) if after.is_zero() => println!(
            "{provider} of the user has expired: it is no longer served once running \
             instances' cached entries expire (`tower-byok purge-expired` deletes it)"
        ),
        (Some(at), after) => println!(
            "{provider} of the user now expires at {} (in {})",
            time::format(at),
            time::format_duration(after.unwrap_or_default())
        ),
    }
    Ok(())
}
