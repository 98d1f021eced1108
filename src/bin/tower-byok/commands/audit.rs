//! The audit trail.

use std::time::SystemTime;

use tower_byok::{Owner, Vault};

use crate::{table, time, CmdResult};

pub(super) async fn audit(
    vault: &Vault,
    owner: Option<Owner<'_>>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> CmdResult {
    let records = match owner {
        None => vault.audit_log(since, until).await?,
        Some(owner) => {
            // The vault reads one owner's trail whole; the time window is applied here.
            let (since, until) = (since.map(time::unix_ms), until.map(time::unix_ms));
            vault
                .audit_trail_for(owner)
                .await?
                .into_iter()
                .filter(|r| since.is_none_or(|s| r.at >= s) && until.is_none_or(|u| r.at < u))
                .collect()
        }
    };
    if records.is_empty() {
        println!("no audit records");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                time::format_ms_precise(r.at),
                r.action.as_str().to_owned(),
                r.provider.clone(),
                r.actor.clone(),
                r.user_ref.clone(),
            ]
        })
        .collect();
    table::print(&["time", "action", "provider", "actor", "user ref"], &rows);
    Ok(())
}
