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
use std::fmt::{self, Write as _};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::keys::KeyInfo;
use crate::validate::{self, MAX_SECRET_LEN};
use crate::vault::Vault;

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

/// The variables of a `.env` file that hold provider keys, and their providers.
///
/// [`EnvMapping::new`] (also the `Default`) maps:
///
/// | variable | provider |
/// |---|---|
/// | `OPENAI_API_KEY` | `openai` |
/// | `GEMINI_API_KEY`, `GOOGLE_API_KEY` | `gemini` |
/// | `EXA_API_KEY` | `exa` |
/// | `ANTHROPIC_API_KEY` | `anthropic` |
/// | `TAVILY_API_KEY` | `tavily` |
/// | `SERPER_API_KEY` | `serper` |
/// | `COPILOTKIT_API_KEY` | `copilotkit` |
/// | `MISTRAL_API_KEY` | `mistral` |
/// | `GROQ_API_KEY` | `groq` |
/// | `COHERE_API_KEY` | `cohere` |
///
/// and, by the suffix rule, any other `<NAME>_API_KEY` to the provider `<name>`
/// lowercased (`OPENROUTER_API_KEY` to `openrouter`). Other variables are skipped and
/// listed in the plan by name. Names match without regard to ASCII case.
///
/// When two variables of one provider (`GEMINI_API_KEY` and `GOOGLE_API_KEY`) are both
/// set, they must hold the same key, or the import is refused as ambiguous; if
/// `GOOGLE_API_KEY` is some other Google key, [`ignore`](Self::ignore) it.
///
/// ```
/// use tower_byok::import::EnvMapping;
///
/// let vars = EnvMapping::new().map("HF_TOKEN", "huggingface").ignore("GOOGLE_API_KEY");
/// assert_eq!(vars.provider_for("HF_TOKEN").as_deref(), Some("huggingface"));
/// assert_eq!(vars.provider_for("google_api_key"), None);
/// assert_eq!(vars.provider_for("OPENROUTER_API_KEY").as_deref(), Some("openrouter"));
/// assert_eq!(vars.provider_for("DATABASE_URL"), None);
/// ```
#[derive(Debug, Clone)]
pub struct EnvMapping {
    /// Upper-cased variable name, and its provider (`None`: ignored). Later entries win.
    vars: Vec<(String, Option<String>)>,
    suffix_rule: bool,
}

const DEFAULT_VARS: &[(&str, &str)] = &[
    ("OPENAI_API_KEY", "openai"),
    ("GEMINI_API_KEY", "gemini"),
    ("GOOGLE_API_KEY", "gemini"),
    ("EXA_API_KEY", "exa"),
    ("ANTHROPIC_API_KEY", "anthropic"),
    ("TAVILY_API_KEY", "tavily"),
    ("SERPER_API_KEY", "serper"),
    ("COPILOTKIT_API_KEY", "copilotkit"),
    ("MISTRAL_API_KEY", "mistral"),
    ("GROQ_API_KEY", "groq"),
    ("COHERE_API_KEY", "cohere"),
];

impl Default for EnvMapping {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvMapping {
    /// The default table above, with the `_API_KEY` suffix rule on.
    pub fn new() -> Self {
        Self {
            vars: DEFAULT_VARS
                .iter()
                .map(|(var, provider)| ((*var).to_owned(), Some((*provider).to_owned())))
                .collect(),
            suffix_rule: true,
        }
    }

    /// No variable mapped and the suffix rule off: only what [`map`](Self::map) adds.
    pub fn empty() -> Self {
        Self {
            vars: Vec::new(),
            suffix_rule: false,
        }
    }

    /// Imports the variable `var` as `provider`'s key, replacing any earlier mapping of
    /// `var`.
    ///
    /// # Panics
    ///
    /// When `provider` is not a valid provider name: a programming error.
    pub fn map(mut self, var: &str, provider: &str) -> Self {
        let provider = match validate::provider(provider) {
            Ok(p) => p.into_owned(),
            Err(e) => panic!("EnvMapping::map: {e}"),
        };
        self.set(var, Some(provider));
        self
    }

    /// Skips the variable `var`, even if the table or the suffix rule maps it.
    pub fn ignore(mut self, var: &str) -> Self {
        self.set(var, None);
        self
    }

    /// Whether a variable `<NAME>_API_KEY` the table does not mention is imported as
    /// provider `<name>`. On in [`new`](Self::new), off in [`empty`](Self::empty).
    pub fn suffix_rule(mut self, on: bool) -> Self {
        self.suffix_rule = on;
        self
    }

    /// The provider whose key the variable `var` holds, if any.
    pub fn provider_for(&self, var: &str) -> Option<String> {
        if let Some((_, provider)) = self
            .vars
            .iter()
            .rev()
            .find(|(name, _)| name.eq_ignore_ascii_case(var))
        {
            return provider.clone();
        }
        if !self.suffix_rule {
            return None;
        }
        strip_api_key_suffix(var)
            .and_then(|name| validate::provider(name).ok())
            .map(|p| p.into_owned())
    }

    fn set(&mut self, var: &str, provider: Option<String>) {
        let var = var.trim().to_ascii_uppercase();
        self.vars.retain(|(name, _)| *name != var);
        self.vars.push((var, provider));
    }
}

/// `name` without a trailing `_API_KEY` (any case), if it has one and something before.
fn strip_api_key_suffix(name: &str) -> Option<&str> {
    const SUFFIX: &str = "_api_key";
    let cut = name
        .len()
        .checked_sub(SUFFIX.len())
        .filter(|&cut| cut > 0)?;
    let suffix = name.get(cut..)?;
    suffix.eq_ignore_ascii_case(SUFFIX).then(|| &name[..cut])
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

fn import_error(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Import).with_detail(detail)
}

fn refuse_removal(why: impl fmt::Display) -> Error {
    import_error(format!(
        "not removing the source file: {why}; nothing was written"
    ))
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

// ---------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------

/// Where in the file a key was found.
enum Origin {
    Line { line: usize, var: String },
    Json(JsonPath),
}

impl Origin {
    /// For the plan, which the operator reads: JSON paths with their user ids.
    fn for_plan(&self) -> String {
        match self {
            Self::Line { line, var } => format!("line {line} ({var})"),
            Self::Json(path) => path.render(true),
        }
    }

    /// For errors: user ids replaced by positions.
    fn for_error(&self) -> String {
        match self {
            Self::Line { line, var } => format!("line {line} ({var})"),
            Self::Json(path) => format!("`{}`", path.render(false)),
        }
    }
}

struct FoundKey {
    user_id: String,
    provider: String,
    secret: Zeroizing<String>,
    origin: Origin,
}

/// The keys found so far, one per user and provider, and what was skipped.
#[derive(Default)]
struct Collector {
    keys: Vec<FoundKey>,
    index: HashMap<(String, String), usize>,
    skipped: Vec<Skipped>,
}

impl Collector {
    fn skip(&mut self, origin: &Origin, reason: SkipReason) {
        self.skipped.push(Skipped {
            origin: origin.for_plan(),
            reason,
        });
    }

    fn add(&mut self, user_id: &str, provider: String, raw: &str, origin: Origin) -> Result<()> {
        let secret = raw.trim();
        if secret.is_empty() {
            self.skip(&origin, SkipReason::Empty);
            return Ok(());
        }
        if secret.len() > MAX_SECRET_LEN {
            return Err(import_error(format!(
                "{}: the key is longer than 16 KiB",
                origin.for_error()
            )));
        }
        if looks_like_fernet(secret) {
            return Err(import_error(format!(
                "{}: the value looks encrypted by the old app (a Fernet token); decrypt \
                 the file's keys before importing",
                origin.for_error()
            )));
        }
        let slot = (user_id.to_owned(), provider);
        if let Some(&i) = self.index.get(&slot) {
            let earlier = &self.keys[i];
            if earlier.secret.as_str() != secret {
                return Err(import_error(format!(
                    "ambiguous input: {} and {} hold different keys for provider `{}` of \
                     the same user; remove one and plan again",
                    earlier.origin.for_error(),
                    origin.for_error(),
                    earlier.provider
                )));
            }
            self.skip(&origin, SkipReason::Duplicate);
            return Ok(());
        }
        self.index.insert(slot.clone(), self.keys.len());
        self.keys.push(FoundKey {
            user_id: slot.0,
            provider: slot.1,
            secret: Zeroizing::new(secret.to_owned()),
            origin,
        });
        Ok(())
    }
}

/// A Fernet token (what the old Python app encrypted keys with): URL-safe base64 of a
/// 0x80 version byte and a timestamp, so it starts `gAAAAA`; at least 57 bytes, i.e.
/// 100 characters.
fn looks_like_fernet(s: &str) -> bool {
    s.len() >= 100
        && s.starts_with("gAAAAA")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
}

fn utf8(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        import_error(format!("line {line}: not valid UTF-8"))
    })
}

// --- .env ---------------------------------------------------------------------------

const EXPECTED_ASSIGNMENT: &str = "expected NAME=value";

fn parse_dotenv(text: &str, user_id: &str, vars: &EnvMapping, found: &mut Collector) -> Result<()> {
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        // The error names the line by number only: the line may hold a secret.
        let parsed =
            parse_env_line(line).map_err(|what| import_error(format!("line {n}: {what}")))?;
        let Some((name, value)) = parsed else {
            continue;
        };
        let origin = Origin::Line {
            line: n,
            var: name.to_owned(),
        };
        match vars.provider_for(name) {
            Some(provider) => found.add(user_id, provider, &value, origin)?,
            None => found.skip(&origin, SkipReason::NotAProviderKey),
        }
    }
    Ok(())
}

/// One line of a `.env` file: `None` for blank and comment lines, else the variable
/// name and its value with quotes and escapes resolved. The error says what is wrong
/// without quoting the line.
fn parse_env_line(line: &str) -> Result<Option<(&str, Zeroizing<String>)>, &'static str> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let line = match line.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
        _ => line,
    };
    let (name, rest) = line.split_once('=').ok_or(EXPECTED_ASSIGNMENT)?;
    let name = name.trim_end();
    let mut bytes = name.bytes();
    let name_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'));
    if !name_ok {
        return Err(EXPECTED_ASSIGNMENT);
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let value = if let Some(quoted) = rest.strip_prefix('"') {
        // Room for the whole value up front: a reallocation would leave a copy behind.
        let mut value = Zeroizing::new(String::with_capacity(quoted.len()));
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated quoted value"),
                Some((i, '"')) => break i + 1,
                Some((_, '\\')) => match chars.next() {
                    None => return Err("unterminated quoted value"),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, c @ ('"' | '\\' | '\''))) => value.push(c),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                },
                Some((_, c)) => value.push(c),
            }
        };
        after_quote(&quoted[end..])?;
        value
    } else if let Some(quoted) = rest.strip_prefix('\'') {
        let end = quoted.find('\'').ok_or("unterminated quoted value")?;
        after_quote(&quoted[end + 1..])?;
        Zeroizing::new(quoted[..end].to_owned())
    } else {
        // `#` starts a comment only after whitespace, so `a#b` is a value.
        let bytes = rest.as_bytes();
        let end = (1..bytes.len())
            .find(|&i| bytes[i] == b'#' && matches!(bytes[i - 1], b' ' | b'\t'))
            .unwrap_or(bytes.len());
        Zeroizing::new(rest[..end].trim().to_owned())
    };
    Ok(Some((name, value)))
}

fn after_quote(rest: &str) -> Result<(), &'static str> {
    let rest = rest.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err("unexpected text after the closing quote")
    }
}

// --- JSON ---------------------------------------------------------------------------

/// A parsed JSON value that keeps members in file order, keeps duplicate members (to
/// refuse them), and holds strings zeroized.
enum Node {
    Null,
    Bool,
    Number,
    Str(Zeroizing<String>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool => "a boolean",
            Self::Number => "a number",
            Self::Str(_) => "a string",
            Self::Array(_) => "an array",
            Self::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Bool)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Number)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Number)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Number)
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(Zeroizing::new(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(Zeroizing::new(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Node>()? {
            members.push(member);
        }
        Ok(Node::Object(members))
    }
}

fn parse_json(bytes: &[u8]) -> Result<Node> {
    serde_json::from_slice(bytes).map_err(|e| {
        // Built from the position only: the parser's own message could quote input.
        let what = match e.classify() {
            serde_json::error::Category::Eof => "unexpected end of JSON",
            _ => "invalid JSON",
        };
        import_error(format!("line {}, column {}: {what}", e.line(), e.column()))
    })
}

/// A JSON path, rendered with or without the user ids it passes through.
#[derive(Clone, Default)]
struct JsonPath(Vec<Seg>);

#[derive(Clone)]
enum Seg {
    Key(String),
    /// A member named by a user id: the id, and the member's 1-based position.
    User(String, usize),
    Index(usize),
}

impl JsonPath {
    fn with(&self, seg: Seg) -> Self {
        let mut path = self.clone();
        path.0.push(seg);
        path
    }

    fn key(&self, key: &str) -> Self {
        self.with(Seg::Key(key.to_owned()))
    }

    fn render(&self, reveal_users: bool) -> String {
        let mut out = String::from("$");
        for seg in &self.0 {
            match seg {
                Seg::Key(key) => push_key(&mut out, key),
                Seg::User(id, _) if reveal_users => push_key(&mut out, id),
                Seg::User(_, n) => {
                    let _ = write!(out, ".<{} user>", ordinal(*n));
                }
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }

    /// For errors.
    fn err(&self) -> String {
        self.render(false)
    }
}

fn push_key(out: &mut String, key: &str) {
    let mut bytes = key.bytes();
    let plain = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if plain {
        out.push('.');
        out.push_str(key);
    } else {
        let _ = write!(out, "[{}]", serde_json::Value::String(key.to_owned()));
    }
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn expected(path: &JsonPath, what: &str, found: &Node) -> Error {
    import_error(format!(
        "`{}`: expected {what}, found {}",
        path.err(),
        found.kind()
    ))
}

/// The member `name` of an object, refusing it twice.
fn member<'a>(
    members: &'a [(String, Node)],
    name: &str,
    path: &JsonPath,
) -> Result<Option<&'a Node>> {
    let mut matching = members.iter().filter(|(key, _)| key == name);
    let first = matching.next().map(|(_, node)| node);
    if matching.next().is_some() {
        return Err(import_error(format!(
            "ambiguous input: `{}` has the member `{name}` twice",
            path.err()
        )));
    }
    Ok(first)
}

/// A string member, if present.
fn string_member<'a>(
    members: &'a [(String, Node)],
    name: &str,
    path: &JsonPath,
) -> Result<Option<&'a str>> {
    match member(members, name, path)? {
        None => Ok(None),
        Some(Node::Str(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(expected(&path.key(name), "a string", other)),
    }
}

fn parse_users(root: &Node, found: &mut Collector) -> Result<()> {
    let root_path = JsonPath::default();
    match root {
        Node::Array(entries) => user_list(entries, &root_path, found),
        Node::Object(members) => match member(members, "users", &root_path)? {
            None => user_map(members, &root_path, found),
            Some(users) => {
                let entry_beside = members.iter().any(|(key, node)| {
                    key != "users"
                        && matches!(node, Node::Object(m) if m.iter().any(|(k, _)| k == "api_keys"))
                });
                if entry_beside {
                    return Err(import_error(
                        "ambiguous input: `$` has both a `users` member and user entries beside it",
                    ));
                }
                let path = root_path.key("users");
                match users {
                    Node::Array(entries) => user_list(entries, &path, found),
                    Node::Object(members) => user_map(members, &path, found),
                    other => Err(expected(&path, "an object or an array", other)),
                }
            }
        },
        other => Err(expected(&root_path, "an object or an array", other)),
    }
}

/// `{"<user id>": {"api_keys": {...}}, ...}`
fn user_map(members: &[(String, Node)], path: &JsonPath, found: &mut Collector) -> Result<()> {
    for (i, (user_id, entry)) in members.iter().enumerate() {
        let path = path.with(Seg::User(user_id.clone(), i + 1));
        let Node::Object(fields) = entry else {
            return Err(expected(&path, "an object", entry));
        };
        for field in ["user_id", "username"] {
            if string_member(fields, field, &path)?.is_some_and(|named| named != user_id) {
                return Err(import_error(format!(
                    "ambiguous input: `{}`: the `{field}` member differs from the entry's name",
                    path.err()
                )));
            }
        }
        user_entry(user_id, fields, &path, found)?;
    }
    Ok(())
}

/// `[{"user_id": "<user id>", "api_keys": {...}}, ...]`, or `username` for `user_id`.
fn user_list(entries: &[Node], path: &JsonPath, found: &mut Collector) -> Result<()> {
    for (i, entry) in entries.iter().enumerate() {
        let path = path.with(Seg::Index(i));
        let Node::Object(fields) = entry else {
            return Err(expected(&path, "an object", entry));
        };
        let user_id = match (
            string_member(fields, "user_id", &path)?,
            string_member(fields, "username", &path)?,
        ) {
            (Some(id), Some(name)) if id != name => {
                return Err(import_error(format!(
                    "ambiguous input: `{}`: `user_id` and `username` differ",
                    path.err()
                )))
            }
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => {
                return Err(import_error(format!(
                    "`{}`: expected a `user_id` or `username` string",
                    path.err()
                )))
            }
        };
        user_entry(user_id, fields, &path, found)?;
    }
    Ok(())
}

fn user_entry(
    user_id: &str,
    fields: &[(String, Node)],
    path: &JsonPath,
    found: &mut Collector,
) -> Result<()> {
    if validate::user_id(user_id).is_err() {
        return Err(import_error(format!(
            "`{}`: a user id must be 1 to 255 bytes",
            path.err()
        )));
    }
    match member(fields, "api_keys", path)? {
        None | Some(Node::Null) => {
            found.skip(&Origin::Json(path.clone()), SkipReason::NoKeys);
            Ok(())
        }
        Some(Node::Object(keys)) => key_map(user_id, keys, &path.key("api_keys"), found),
        Some(other) => Err(expected(&path.key("api_keys"), "an object", other)),
    }
}

/// `{"openai": "...", "GEMINI_API_KEY": "...", ...}`
fn key_map(
    user_id: &str,
    members: &[(String, Node)],
    path: &JsonPath,
    found: &mut Collector,
) -> Result<()> {
    for (i, (name, value)) in members.iter().enumerate() {
        let trimmed = name.trim();
        let base = strip_api_key_suffix(trimmed).unwrap_or(trimmed);
        let Ok(provider) = validate::provider(base) else {
            // Not quoted: a name that is no provider name may be anything, even a key.
            return Err(import_error(format!(
                "`{}`: the name of the {} member is not a valid provider name \
                 ([a-z0-9][a-z0-9_.-]{{0,63}}, optionally with `_api_key`)",
                path.err(),
                ordinal(i + 1)
            )));
        };
        let path = path.key(name);
        match value {
            Node::Null => found.skip(&Origin::Json(path), SkipReason::Empty),
            Node::Str(secret) => {
                found.add(user_id, provider.into_owned(), secret, Origin::Json(path))?
            }
            other => return Err(expected(&path, "a string", other)),
        }
    }
    Ok(())
}

fn parse_onboarding(root: &Node, user_id: &str, found: &mut Collector) -> Result<()> {
    let root_path = JsonPath::default();
    let Node::Object(members) = root else {
        return Err(expected(&root_path, "an object", root));
    };
    let path = root_path.key("steps");
    let steps = match member(members, "steps", &root_path)? {
        Some(Node::Array(steps)) => steps,
        Some(other) => return Err(expected(&path, "an array", other)),
        None => return Err(import_error("`$`: expected a `steps` array")),
    };
    for (i, step) in steps.iter().enumerate() {
        let path = path.with(Seg::Index(i));
        let Node::Object(step) = step else {
            return Err(expected(&path, "an object", step));
        };
        let data = match member(step, "data", &path)? {
            None | Some(Node::Null) => continue,
            Some(Node::Object(data)) => data,
            Some(other) => return Err(expected(&path.key("data"), "an object", other)),
        };
        let path = path.key("data");
        match member(data, "api_keys", &path)? {
            None | Some(Node::Null) => {}
            Some(Node::Object(keys)) => key_map(user_id, keys, &path.key("api_keys"), found)?,
            Some(other) => return Err(expected(&path.key("api_keys"), "an object", other)),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn line(s: &str) -> Option<(String, String)> {
        parse_env_line(s)
            .unwrap()
            .map(|(name, value)| (name.to_owned(), value.as_str().to_owned()))
    }

    fn pair(name: &str, value: &str) -> Option<(String, String)> {
        Some((name.to_owned(), value.to_owned()))
    }

    #[test]
    fn env_lines_parse_like_dotenv() {
        assert_eq!(line(""), None);
        assert_eq!(line("   "), None);
        assert_eq!(line("# OPENAI_API_KEY=sk-old"), None);
        assert_eq!(line("  #x"), None);
        assert_eq!(line("A=b"), pair("A", "b"));
        assert_eq!(line("export A=b"), pair("A", "b"));
        assert_eq!(line("export\tA = b "), pair("A", "b"));
        assert_eq!(line("exportA=b"), pair("exportA", "b"));
        assert_eq!(line("A="), pair("A", ""));
        assert_eq!(line("A=b # comment"), pair("A", "b"));
        assert_eq!(line("A=b#c"), pair("A", "b#c"));
        assert_eq!(line("A=#b"), pair("A", "#b"));
        assert_eq!(line("A=\"b c\" # comment"), pair("A", "b c"));
        assert_eq!(line("A=\"b#c\""), pair("A", "b#c"));
        assert_eq!(
            line(r#"A="q\"uote\\d\nx\z""#),
            pair("A", "q\"uote\\d\nx\\z")
        );
        assert_eq!(line(r"A='raw\n #x'"), pair("A", r"raw\n #x"));
        assert_eq!(line("A=''"), pair("A", ""));
        assert_eq!(line("a.b_C9=1"), pair("a.b_C9", "1"));
    }

    #[test]
    fn malformed_env_lines_are_refused() {
        for bad in [
            "sk-proj-0123456789",
            "=value",
            "9A=b",
            "A B=c",
            "A-B=c",
            "export",
            "A=\"open",
            "A='open",
            "A=\"ends\\",
            "A=\"x\" y",
            "A='x'y",
        ] {
            assert!(parse_env_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mapping_follows_table_suffix_and_overrides() {
        let vars = EnvMapping::new();
        assert_eq!(
            vars.provider_for("GOOGLE_API_KEY").as_deref(),
            Some("gemini")
        );
        assert_eq!(
            vars.provider_for("openai_api_key").as_deref(),
            Some("openai")
        );
        assert_eq!(
            vars.provider_for("FIRECRAWL_API_KEY").as_deref(),
            Some("firecrawl")
        );
        assert_eq!(vars.provider_for("_API_KEY"), None);
        assert_eq!(vars.provider_for("__X_API_KEY"), None);
        assert_eq!(vars.provider_for("API_KEY"), None);
        assert_eq!(vars.provider_for("DEBUG"), None);
        let vars = EnvMapping::empty().map("MY_OPENAI", "OpenAI");
        assert_eq!(vars.provider_for("my_openai").as_deref(), Some("openai"));
        assert_eq!(vars.provider_for("EXA_API_KEY"), None);
        let vars = EnvMapping::new()
            .ignore("exa_api_key")
            .map("GOOGLE_API_KEY", "google");
        assert_eq!(vars.provider_for("EXA_API_KEY"), None);
        assert_eq!(
            vars.provider_for("GOOGLE_API_KEY").as_deref(),
            Some("google")
        );
    }

    #[test]
    fn paths_hide_user_ids_in_errors_only() {
        let path = JsonPath::default()
            .key("users")
            .with(Seg::User("alice@example.com".into(), 2))
            .key("api_keys")
            .key("azure.openai")
            .with(Seg::Index(3));
        assert_eq!(
            path.render(true),
            r#"$.users["alice@example.com"].api_keys["azure.openai"][3]"#
        );
        assert_eq!(
            path.err(),
            r#"$.users.<2nd user>.api_keys["azure.openai"][3]"#
        );
        assert_eq!(
            [1, 2, 3, 4, 11, 12, 13, 21, 22, 111].map(ordinal),
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "111th"]
        );
    }

    #[test]
    fn fernet_tokens_are_recognized() {
        let token = format!("gAAAAAB{}", "x".repeat(120));
        assert!(looks_like_fernet(&token));
        assert!(!looks_like_fernet("gAAAAAshort"));
        assert!(!looks_like_fernet(&format!("sk-{}", "x".repeat(120))));
    }
}
