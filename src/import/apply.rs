//! [`apply`]: writing a plan's keys, reading them back, and removing the source.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::json::ordinal;
use super::{
    import_error, read_source, write_table, ImportPlan, KeyStatus, StoredKeys, IMPORT_ACTOR,
};
use crate::error::{Error, Result};
use crate::vault::Vault;

/// What [`apply`] may do besides adding new keys. The default does nothing more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    replace_different: bool,
    remove_source: bool,
}

impl ApplyOptions {
    /// Adds new keys only; the same as `Default`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a key that differs from the user's stored one replaces it. Off by
    /// default: such a key is reported as [`Outcome::Conflict`] and left alone.
    pub fn replace_different(mut self, yes: bool) -> Self {
        self.replace_different = yes;
        self
    }

    /// Whether to remove the source file once every key of the plan is stored and
    /// verified. Off by default.
    ///
    /// The file is first copied to `<file>.bak-<unix-seconds>` in the same directory
    /// (created new, mode `0600` on Unix; it holds the plaintext keys, so delete it once
    /// satisfied). [`apply`] refuses, before writing anything, when that backup exists,
    /// when the file changed since it was planned, or when conflicts would leave keys of
    /// the file unimported.
    pub fn remove_source(mut self, yes: bool) -> Self {
        self.remove_source = yes;
        self
    }
}

/// What [`apply`] did with one key of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Stored: the user had no key for this provider.
    Added,
    /// Stored in place of a different key ([`ApplyOptions::replace_different`]).
    Replaced,
    /// Already stored with this value: nothing written.
    Unchanged,
    /// The user has a different key for this provider, left alone.
    Conflict,
}

impl Outcome {
    /// `"added"`, `"replaced"`, `"unchanged"` or `"conflict"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Replaced => "replaced",
            Self::Unchanged => "unchanged",
            Self::Conflict => "conflict",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key of an import and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportEntry {
    user_id: String,
    provider: String,
    masked: String,
    outcome: Outcome,
}

impl ReportEntry {
    /// The user the key belongs to.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The normalized provider name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// At most the first and last four characters of the key.
    pub fn masked(&self) -> &str {
        &self.masked
    }

    /// What happened.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }
}

/// What [`apply`] did: every key of the plan with its [`Outcome`]. Every key not in
/// conflict was read back from the database and matched the file.
#[derive(Debug, Clone)]
pub struct ImportReport {
    entries: Vec<ReportEntry>,
    backup: Option<PathBuf>,
}

impl ImportReport {
    /// Every key of the plan, in plan order.
    pub fn entries(&self) -> &[ReportEntry] {
        &self.entries
    }

    /// How many keys had `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.entries.iter().filter(|e| e.outcome == outcome).count()
    }

    /// Where the source file was copied before it was removed, if it was.
    pub fn backup(&self) -> Option<&Path> {
        self.backup.as_deref()
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "import done, every key not in conflict read back and verified:"
        )?;
        let rows: Vec<[&str; 4]> = self
            .entries
            .iter()
            .map(|e| [e.outcome.as_str(), &e.user_id, &e.provider, &e.masked])
            .collect();
        write_table(f, &rows)?;
        write!(
            f,
            "{} added, {} replaced, {} unchanged, {} conflicts (left alone)",
            self.count(Outcome::Added),
            self.count(Outcome::Replaced),
            self.count(Outcome::Unchanged),
            self.count(Outcome::Conflict)
        )?;
        if let Some(backup) = &self.backup {
            write!(
                f,
                "; source removed, backup at {} (holds plaintext keys)",
                backup.display()
            )?;
        }
        Ok(())
    }
}

/// Carries out `plan`: stores its new keys (and its different ones, if asked) through
/// `vault` with the audit actor [`IMPORT_ACTOR`], reads every key of the plan not in
/// conflict back from the database and compares it with the file, and only then removes
/// the source file, if asked.
///
/// Each key is compared with the vault again when applied, not as planned, so a key
/// stored since the plan was made is not overwritten without
/// [`ApplyOptions::replace_different`]. Keys already stored with the same value are not
/// written again: applying a plan twice changes nothing. If a write fails midway, the
/// keys written so far stay; applying again completes the import.
///
/// # Errors
///
/// [`ErrorKind::Import`] when a key does not read back as imported, or when removing the
/// source is refused or fails (see [`ApplyOptions::remove_source`]); the key's own error
/// kind ([`ErrorKind::Decrypt`], ...) when a key of the plan does not open; store and
/// input errors as [`Vault::put`]. The source file is never removed after an error.
///
/// [`ErrorKind::Import`]: crate::ErrorKind::Import
/// [`ErrorKind::Decrypt`]: crate::ErrorKind::Decrypt
pub async fn apply(vault: &Vault, plan: &ImportPlan, opts: ApplyOptions) -> Result<ImportReport> {
    let writer = vault.with_actor(IMPORT_ACTOR)?;

    let backup = if opts.remove_source {
        let backup = backup_path(&plan.source)?;
        if backup.symlink_metadata().is_ok() {
            return Err(refuse_removal("the backup file already exists"));
        }
        if unchanged_source(plan)?.is_none() {
            return Err(refuse_removal(
                "the file changed since the plan was made; plan again",
            ));
        }
        Some(backup)
    } else {
        None
    };

    let mut stored = StoredKeys::default();
    let mut statuses = Vec::with_capacity(plan.keys.len());
    for key in &plan.keys {
        statuses.push(
            stored
                .status(vault, &key.user_id, &key.provider, &key.secret)
                .await?,
        );
    }
    let conflicts = statuses
        .iter()
        .filter(|s| **s == KeyStatus::Different)
        .count();
    if backup.is_some() && !opts.replace_different && conflicts > 0 {
        return Err(refuse_removal(format!(
            "{conflicts} key(s) of the file differ from the stored ones and would not be \
             imported; replace them or keep the file"
        )));
    }

    let mut entries = Vec::with_capacity(plan.keys.len());
    for (key, status) in plan.keys.iter().zip(statuses) {
        let outcome = match status {
            KeyStatus::Identical => Outcome::Unchanged,
            KeyStatus::Different if !opts.replace_different => Outcome::Conflict,
            KeyStatus::New | KeyStatus::Different => {
                writer.put(&key.user_id, &key.provider, &key.secret).await?;
                if status == KeyStatus::New {
                    Outcome::Added
                } else {
                    Outcome::Replaced
                }
            }
        };
        entries.push(ReportEntry {
            user_id: key.user_id.clone(),
            provider: key.provider.clone(),
            masked: key.masked.clone(),
            outcome,
        });
    }

    for (i, (key, entry)) in plan.keys.iter().zip(&entries).enumerate() {
        if entry.outcome == Outcome::Conflict {
            continue;
        }
        let place = || {
            format!(
                "verifying the {} key of the plan (provider `{}`)",
                ordinal(i + 1),
                key.provider
            )
        };
        let read = vault
            .get(&key.user_id, &key.provider)
            .await
            .map_err(|e| e.with_detail(place()))?;
        if read.as_ref().map(|k| k.expose_secret()) != Some(key.secret.as_str()) {
            return Err(import_error(format!(
                "{}: the stored key does not match the file",
                place()
            )));
        }
    }

    if let Some(backup) = &backup {
        back_up_and_remove(plan, backup)?;
    }
    tracing::info!(
        added = entries
            .iter()
            .filter(|e| e.outcome == Outcome::Added)
            .count(),
        replaced = entries
            .iter()
            .filter(|e| e.outcome == Outcome::Replaced)
            .count(),
        conflicts = entries
            .iter()
            .filter(|e| e.outcome == Outcome::Conflict)
            .count(),
        source_removed = backup.is_some(),
        "imported legacy provider keys"
    );
    Ok(ImportReport { entries, backup })
}

fn refuse_removal(why: impl fmt::Display) -> Error {
    import_error(format!(
        "not removing the source file: {why}; nothing was written"
    ))
}

/// The source file's bytes, if they are still those the plan was made from.
fn unchanged_source(plan: &ImportPlan) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let bytes = read_source(&plan.source)?;
    let unchanged = <[u8; 32]>::from(Sha256::digest(&bytes[..])) == plan.digest;
    Ok(unchanged.then_some(bytes))
}

/// `<file>.bak-<unix-seconds>` next to `source`.
fn backup_path(source: &Path) -> Result<PathBuf> {
    let name = source
        .file_name()
        .ok_or_else(|| import_error("the source path names no file"))?;
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut backup = name.to_os_string();
    backup.push(format!(".bak-{secs}"));
    Ok(source.with_file_name(backup))
}

fn back_up_and_remove(plan: &ImportPlan, backup: &Path) -> Result<()> {
    let not_removed =
        |what: &'static str| format!("{what}; the keys are imported, the source was not removed");
    let Some(bytes) = unchanged_source(plan)? else {
        return Err(import_error(not_removed(
            "the file changed while importing",
        )));
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(backup)
        .map_err(|e| import_error(not_removed("cannot create the backup file")).with_source(e))?;
    if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = fs::remove_file(backup);
        return Err(import_error(not_removed("cannot write the backup file")).with_source(e));
    }
    fs::remove_file(&plan.source).map_err(|e| {
        import_error(not_removed(
            "cannot remove the source file (the backup was made)",
        ))
        .with_source(e)
    })
}
