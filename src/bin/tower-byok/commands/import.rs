//! Importing legacy files.

use tower_byok::import::{self, ApplyOptions, KeyStatus, LegacyFormat};
use tower_byok::Vault;

use crate::cli::{ImportFormat, ImportOpts};
use crate::CmdResult;

pub(super) async fn import(vault: &Vault, format: ImportFormat) -> CmdResult {
    let (format, opts): (LegacyFormat, ImportOpts) = match format {
        ImportFormat::Env { user, opts } => (LegacyFormat::dot_env(user), opts),
        ImportFormat::UsersJson { opts } => (LegacyFormat::UsersJson, opts),
        ImportFormat::Onboarding { user, opts } => (LegacyFormat::onboarding_json(user), opts),
    };
    let plan = import::plan(vault, &opts.file, format).await?;
    if !opts.apply {
        println!("{plan}");
        let replace = if plan.count(KeyStatus::Different) > 0 {
            " (add --replace-different to replace the different keys)"
        } else {
            ""
        };
        println!("dry run: nothing was written. Run again with --apply to import{replace}.");
        return Ok(());
    }
    let options = ApplyOptions::new()
        .replace_different(opts.replace_different)
        .remove_source(opts.remove_source);
    let report = import::apply(vault, &plan, options).await?;
    println!("{report}");
    for skipped in plan.skipped() {
        println!("  skipped: {}: {}", skipped.origin(), skipped.reason());
    }
    Ok(())
}
