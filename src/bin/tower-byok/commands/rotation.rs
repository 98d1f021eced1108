//! After a rotation: re-sealing, verifying, and which master keys are in use.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tower_byok::{Progress, RowFailure, Vault, VerifyReport};

use super::{plural, quoted_list};
use crate::{table, CmdResult, Fail};

fn progress_bar(what: &'static str) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(0), target);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} keys, {elapsed} ({eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what);
    bar
}

fn show_progress(bar: &ProgressBar) -> impl FnMut(Progress) + '_ {
    move |p: Progress| {
        bar.set_length(p.total.max(p.done));
        bar.set_position(p.done);
    }
}

pub(super) async fn rewrap(vault: &Vault, batch: u32) -> CmdResult {
    let active = vault.keyring().active().id().to_owned();
    let bar = progress_bar("rewrap");
    let report = vault.rewrap(batch, show_progress(&bar)).await;
    bar.finish_and_clear();
    let report = report.map_err(|e| {
        Fail::from(e).context("rewrap stopped (the keys re-sealed so far stay done; run it again)")
    })?;
    println!(
        "rewrap: {} {} re-sealed under `{active}`, {} changed meanwhile (left as they are), \
         {} failed",
        report.resealed,
        plural(report.resealed, "key", "keys"),
        report.changed_meanwhile,
        report.failed.len()
    );
    print_failures(&report.failed);
    let verified = verify(vault).await?;
    fail_on_unopened(report.failed.len().max(verified.failed.len()))
}

/// Runs a verification with a progress bar, and prints its report.
pub(super) async fn verify(vault: &Vault) -> CmdResult<VerifyReport> {
    let bar = progress_bar("verify");
    let report = vault.verify(show_progress(&bar)).await;
    bar.finish_and_clear();
    let report = report?;
    println!("verify: {report}");
    print_failures(&report.failed);
    let keyring = vault.keyring();
    let active = keyring.active().id();
    let under_old: u64 = report
        .usage
        .iter()
        .filter(|u| u.master_key_id != active)
        .map(|u| u.rows)
        .sum();
    let retirable: Vec<&str> = keyring
        .ids()
        .filter(|id| *id != active)
        .filter(|id| {
            !report
                .usage
                .iter()
                .any(|u| u.master_key_id == *id && u.rows > 0)
        })
        .collect();
    if report.is_ok() {
        if under_old > 0 {
            println!(
                "{under_old} {} still sealed under older master keys: run `tower-byok rewrap`",
                plural(under_old, "key is", "keys are")
            );
        } else if !retirable.is_empty() {
            println!(
                "every key is sealed under `{active}`: {} can be retired \
                 (`tower-byok retire --key-id ID`)",
                quoted_list(&retirable)
            );
        }
    }
    Ok(report)
}

fn print_failures(failed: &[RowFailure]) {
    for f in failed {
        println!(
            "  does not open: provider {}, master key `{}`, user ref {}: {}",
            f.provider, f.master_key_id, f.user_ref, f.kind
        );
    }
}

pub(super) fn fail_on_unopened(failed: usize) -> CmdResult {
    if failed == 0 {
        Ok(())
    } else {
        Err(Fail::new(format!(
            "{failed} stored {} did not open (listed above): restore the master keys \
             they name, or delete and store them again",
            plural(failed, "key", "keys")
        )))
    }
}

pub(super) async fn usage(vault: &Vault) -> CmdResult {
    let usage = vault.master_key_usage().await?;
    let keyring = vault.keyring();
    let active = keyring.active().id();
    let mut rows: Vec<Vec<String>> = keyring
        .ids()
        .map(|id| {
            let keys = usage
                .iter()
                .find(|u| u.master_key_id == id)
                .map_or(0, |u| u.rows);
            let status = if id == active { "active" } else { "in keyring" };
            vec![id.to_owned(), keys.to_string(), status.to_owned()]
        })
        .collect();
    rows.extend(
        usage
            .iter()
            .filter(|u| keyring.get(&u.master_key_id).is_none())
            .map(|u| {
                vec![
                    u.master_key_id.clone(),
                    u.rows.to_string(),
                    "NOT in keyring".to_owned(),
                ]
            }),
    );
    table::print(&["master key", "keys", "status"], &rows);
    Ok(())
}
