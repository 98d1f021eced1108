//! Importing keys from the files apps kept them in before the vault: a `.env` file, a
//! users JSON file with per-user key maps, and an onboarding progress JSON file.
//!
//! An import has two steps:
//!
//! 1. [`plan`] reads and parses the file and compares every key with what the vault
//!    holds. It writes nothing: the [`ImportPlan`] is the dry run, to show the operator
//!    (its `Display` lists users, providers and masked keys, never a secret).
//! 2. [`apply`] writes the keys that are new, and, only when asked with
//!    [`ApplyOptions::replace_different`], those that differ from the stored ones. It
//!    then reads every key of the plan back from the database and compares it with the
//!    file before reporting success.
//!
//! Running an import again changes nothing: keys already stored with the same value
//! are skipped, so no audit record is written for them. The source file is only read,
//! unless [`ApplyOptions::remove_source`] asks for it to be removed after a verified
//! import, which first copies it to `<file>.bak-<unix-seconds>` next to it.
//!
//! Input the importer cannot read with certainty is refused, and nothing is written:
//! a malformed line or JSON value ([`ErrorKind::Import`], naming the line or the JSON
//! path), and ambiguous input such as one provider's key given twice with different
//! values (naming both places). No error contains a secret, a line of the file or a
//! user id: a user id in a JSON path is replaced by the entry's position, e.g.
//! `$.users.<2nd user>.api_keys.openai`.
//!
//! ```
//! use tower_byok::import::{self, ApplyOptions, KeyStatus, LegacyFormat, Outcome};
//! use tower_byok::{Keyring, MasterKey, SqliteStore, Vault};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vault = Vault::open(SqliteStore::in_memory().await?, Keyring::new(MasterKey::generate("k1")?)).await?;
//! let dir = tempfile::tempdir()?;
//! let env = dir.path().join(".env");
//! std::fs::write(
//!     &env,
//!     "DEBUG=true\nexport OPENAI_API_KEY=\"sk-proj-dev-0123456789\"\nEXA_API_KEY=exa-dev-0123456789 # mine\n",
//! )?;
//!
//! // The dry run: what would be imported, for the operator to read. Nothing is written.
//! let plan = import::plan(&vault, &env, LegacyFormat::dot_env("alice")).await?;
//! assert_eq!(plan.count(KeyStatus::New), 2);
//! assert_eq!(plan.keys()[0].masked(), "sk…89");
//! assert!(plan.to_string().contains("line 2 (OPENAI_API_KEY)"));
//! assert!(vault.list("alice").await?.is_empty());
//!
//! // The import: writes, then reads every key back before reporting success.
//! let report = import::apply(&vault, &plan, ApplyOptions::new()).await?;
//! assert_eq!(report.count(Outcome::Added), 2);
//! let key = vault.get("alice", "exa").await?.expect("imported");
//! assert_eq!(key.expose_secret(), "exa-dev-0123456789");
//!
//! // Running it again changes nothing.
//! let again = import::plan(&vault, &env, LegacyFormat::dot_env("alice")).await?;
//! assert_eq!(again.count(KeyStatus::Identical), 2);
//! let report = import::apply(&vault, &again, ApplyOptions::new()).await?;
//! assert_eq!(report.count(Outcome::Unchanged), 2);
//! assert!(env.exists(), "the source is kept unless removal is asked for");
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::keys::KeyInfo;
use crate::validate;
use crate::vault::Vault;

mod apply;
mod collect;
mod env;
mod json;
mod onboarding;
mod users_json;

use crate::env_file::EnvMapping;
pub use apply::{apply, ApplyOptions, ImportReport, Outcome, ReportEntry};

use collect::{utf8, Collector};
use env::parse_dotenv;
use json::parse_json;
use onboarding::parse_onboarding;
use users_json::parse_users;

/// The actor [`apply`] records in the audit trail for the keys it writes.
pub const IMPORT_ACTOR: &str = "import";

/// The largest source file [`plan`] reads, in bytes (16 MiB).
pub const MAX_SOURCE_LEN: u64 = 16 * 1024 * 1024;

/// The kind of file to import, and whose keys it holds when the file does not say.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LegacyFormat {
    /// A `.env` file of one developer: `NAME=value` lines whose variables name
    /// providers through `vars` (see [`EnvMapping`]).
    DotEnv {
        /// The user the keys are imported for.
        user_id: String,
        /// Which variables hold which provider's key.
        vars: EnvMapping,
    },
    /// A users file with per-user key maps, in one of these shapes:
    ///
    /// - `{"users": {"<user id>": {"api_keys": {"openai": "..."}}}}`
    /// - `{"<user id>": {"api_keys": {...}}}`
    /// - `{"users": [{"user_id": "<user id>", "api_keys": {...}}]}` or the bare list,
    ///   where an entry names its user by `user_id` or `username` (both present must
    ///   agree).
    ///
    /// Other members of an entry (passwords, emails, ...) are ignored.
    UsersJson,
    /// An onboarding progress file, `{"steps": [{"step_number": 1, "data": {"api_keys":
    /// {"gemini": "...", "exa": "..."}}}]}`: the keys of every step's `data.api_keys`.
    ///
    /// Such a file was shared by everyone using the app that wrote it, so it names no
    /// user: the importer has to be told whose keys these are.
    OnboardingJson {
        /// The user the keys are imported for.
        user_id: String,
    },
}

impl LegacyFormat {
    /// A `.env` file of `user_id`, with the default variable table ([`EnvMapping::new`]).
    pub fn dot_env(user_id: impl Into<String>) -> Self {
        Self::DotEnv {
            user_id: user_id.into(),
            vars: EnvMapping::new(),
        }
    }

    /// An onboarding progress file holding `user_id`'s keys.
    pub fn onboarding_json(user_id: impl Into<String>) -> Self {
        Self::OnboardingJson {
            user_id: user_id.into(),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::DotEnv { .. } => ".env file",
            Self::UsersJson => "users JSON file",
            Self::OnboardingJson { .. } => "onboarding progress JSON file",
        }
    }
}

/// How a key of the file compares with what the vault holds, when planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyStatus {
    /// The user has no key for this provider: it would be added.
    New,
    /// The user already has this very key: nothing to do.
    Identical,
    /// The user has a different key for this provider (or the same one, expired): it is
    /// replaced only with [`ApplyOptions::replace_different`].
    Different,
}

impl KeyStatus {
    /// `"new"`, `"identical"` or `"different"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Identical => "identical",
            Self::Different => "different",
        }
    }
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key found in the source file. The secret is held, zeroized on drop, and never
/// printed: `Debug` and `Display` show the masked form.
pub struct PlannedKey {
    user_id: String,
    provider: String,
    masked: String,
    origin: String,
    status: KeyStatus,
    secret: Zeroizing<String>,
}

impl PlannedKey {
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

    /// Where in the file the key is: `line 3 (OPENAI_API_KEY)` or a JSON path such as
    /// `$.users.alice.api_keys.openai`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// How the key compared with the vault when the plan was made.
    pub fn status(&self) -> KeyStatus {
        self.status
    }
}

impl fmt::Debug for PlannedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlannedKey")
            .field("user_id", &self.user_id)
            .field("provider", &self.provider)
            .field("masked", &self.masked)
            .field("origin", &self.origin)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Why something in the source file is not imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SkipReason {
    /// A `.env` variable that names no provider (see [`EnvMapping`]).
    NotAProviderKey,
    /// An empty value (after trimming) or `null`.
    Empty,
    /// The same key for the same user and provider, found earlier in the file.
    Duplicate,
    /// A user entry without `api_keys`.
    NoKeys,
}

impl SkipReason {
    /// A short description, e.g. `"not a provider key"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAProviderKey => "not a provider key",
            Self::Empty => "empty",
            Self::Duplicate => "same key as earlier in the file",
            Self::NoKeys => "no api_keys",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something in the source file that is not imported, and why. Names a place, never a
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    origin: String,
    reason: SkipReason,
}

impl Skipped {
    /// Where: `line 1 (DEBUG)` or a JSON path.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Why it is not imported.
    pub fn reason(&self) -> SkipReason {
        self.reason
    }
}

/// What an import would do: made by [`plan`], carried out by [`apply`].
///
/// `Display` is a report for the operator: per key the user, provider, masked key,
/// status and place in the file, then what was skipped. Neither it nor `Debug` contains
/// a secret.
pub struct ImportPlan {
    source: PathBuf,
    format: &'static str,
    digest: [u8; 32],
    keys: Vec<PlannedKey>,
    skipped: Vec<Skipped>,
}

impl ImportPlan {
    /// The keys found, in file order, one per user and provider.
    pub fn keys(&self) -> &[PlannedKey] {
        &self.keys
    }

    /// What was found but will not be imported.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// The file the plan was made from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// How many keys had `status` when the plan was made.
    pub fn count(&self, status: KeyStatus) -> usize {
        self.keys.iter().filter(|k| k.status == status).count()
    }

    /// Whether the file holds no key at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for ImportPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportPlan")
            .field("source", &self.source)
            .field("format", &self.format)
            .field("keys", &self.keys)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ImportPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "import plan (dry run, nothing written) for {} ({}):",
            self.source.display(),
            self.format
        )?;
        let rows: Vec<[&str; 5]> = self
            .keys
            .iter()
            .map(|k| {
                [
                    k.status.as_str(),
                    &k.user_id,
                    &k.provider,
                    &k.masked,
                    &k.origin,
                ]
            })
            .collect();
        write_table(f, &rows)?;
        for s in &self.skipped {
            writeln!(f, "  skipped: {}: {}", s.origin, s.reason)?;
        }
        write!(
            f,
            "{} new, {} identical (skipped), {} different (replaced only if asked)",
            self.count(KeyStatus::New),
            self.count(KeyStatus::Identical),
            self.count(KeyStatus::Different)
        )
    }
}

/// Writes rows as aligned columns, each line indented by two spaces.
fn write_table<const N: usize>(f: &mut fmt::Formatter<'_>, rows: &[[&str; N]]) -> fmt::Result {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        f.write_str(" ")?;
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                writeln!(f, " {cell}")?;
            } else {
                write!(f, " {cell:<w$}")?;
            }
        }
    }
    Ok(())
}

/// Reads `source` as `format`, and compares each key found with what `vault` holds.
/// Writes nothing, and only reads the file (a small blocking read).
///
/// Secrets are trimmed; empty ones are skipped. Provider names are lowercased as the
/// vault does, and in JSON key maps a trailing `_api_key` is dropped (`GEMINI_API_KEY`
/// is `gemini`).
///
/// # Errors
///
/// [`ErrorKind::Import`] when the file cannot be read, is larger than
/// [`MAX_SOURCE_LEN`], is malformed (the message names the line, or the line and
/// column, or the JSON path), or is ambiguous: one user's key for one provider given
/// twice with different values (the message names both places), a JSON member given
/// twice, a user entry whose `user_id` and `username` disagree. A value that looks like
/// an encrypted Fernet token of the old app is refused too: decrypt it first.
/// [`ErrorKind::InvalidUserId`] when the user id of a `.env` or onboarding import is
/// unusable; store errors as [`Vault::list`].
pub async fn plan(
    vault: &Vault,
    source: impl AsRef<Path>,
    format: LegacyFormat,
) -> Result<ImportPlan> {
    let source = source.as_ref();
    let bytes = read_source(source)?;
    let digest: [u8; 32] = Sha256::digest(&bytes[..]).into();
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
    let mut found = Collector::default();
    match &format {
        LegacyFormat::DotEnv { user_id, vars } => {
            let user_id = validate::user_id(user_id)?;
            parse_dotenv(utf8(bytes)?, user_id, vars, &mut found)?;
        }
        LegacyFormat::UsersJson => parse_users(&parse_json(bytes)?, &mut found)?,
        LegacyFormat::OnboardingJson { user_id } => {
            let user_id = validate::user_id(user_id)?;
            parse_onboarding(&parse_json(bytes)?, user_id, &mut found)?;
        }
    }

    let mut stored = StoredKeys::default();
    let mut keys = Vec::with_capacity(found.keys.len());
    for key in found.keys {
        let status = stored
            .status(vault, &key.user_id, &key.provider, &key.secret)
            .await?;
        keys.push(PlannedKey {
            masked: validate::mask(&key.secret),
            origin: key.origin.for_plan(),
            user_id: key.user_id,
            provider: key.provider,
            status,
            secret: key.secret,
        });
    }
    Ok(ImportPlan {
        source: source.to_owned(),
        format: format.describe(),
        digest,
        keys,
        skipped: found.skipped,
    })
}

/// The stored keys of the users seen so far, listed once per user.
#[derive(Default)]
struct StoredKeys(HashMap<String, Vec<KeyInfo>>);

impl StoredKeys {
    async fn status(
        &mut self,
        vault: &Vault,
        user_id: &str,
        provider: &str,
        secret: &str,
    ) -> Result<KeyStatus> {
        if !self.0.contains_key(user_id) {
            let listed = vault.list(user_id).await?;
            self.0.insert(user_id.to_owned(), listed);
        }
        let stored = self.0.get(user_id).map_or(&[][..], Vec::as_slice);
        Ok(match stored.iter().find(|k| k.provider == provider) {
            None => KeyStatus::New,
            Some(k) if !k.is_expired() && k.fingerprint == vault.fingerprint(secret) => {
                KeyStatus::Identical
            }
            Some(_) => KeyStatus::Different,
        })
    }
}

fn import_error(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Import).with_detail(detail)
}

fn read_source(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let meta = fs::metadata(path)
        .map_err(|e| import_error("cannot read the source file").with_source(e))?;
    if !meta.is_file() {
        return Err(import_error("the source is not a regular file"));
    }
    if meta.len() > MAX_SOURCE_LEN {
        return Err(import_error("the source file is larger than 16 MiB"));
    }
    let bytes =
        fs::read(path).map_err(|e| import_error("cannot read the source file").with_source(e))?;
    Ok(Zeroizing::new(bytes))
}
