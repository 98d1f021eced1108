//! The command line: options, subcommands, and usage errors that repeat no value.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand};

/// Admin tool for a tower-byok vault: users' "bring your own key" provider keys, sealed
/// in SQLite or PostgreSQL.
///
/// Secrets are read from standard input or a hidden prompt, never from arguments, and
/// never printed: listings show masked forms only.
#[derive(Debug, Parser)]
#[command(name = "tower-byok", version, max_term_width = 100)]
pub(crate) struct Cli {
    /// The database: `sqlite://PATH?mode=rwc` (creates the file), `sqlite:PATH`, or
    /// `postgres://USER@HOST/DB`.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "BYOK_DATABASE_URL",
        hide_env_values = true,
        help_heading = "Global options"
    )]
    pub(crate) database: Option<String>,

    /// What stands between `--database` and PostgreSQL: `session` (the server itself,
    /// or a pooler in session mode) or `transaction` (a pooler in transaction mode:
    /// PgBouncer's `pool_mode = transaction`, Supabase's port 6543, Neon's `-pooler`
    /// hosts, RDS Proxy).
    #[arg(
        long,
        global = true,
        value_name = "MODE",
        value_enum,
        default_value = "session",
        env = "BYOK_POOL_MODE",
        help_heading = "Global options"
    )]
    pub(crate) pool_mode: PoolModeArg,

    /// A direct URL of the same PostgreSQL database, not through the pooler: the
    /// migrations run there.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "BYOK_DIRECT_DATABASE_URL",
        hide_env_values = true,
        help_heading = "Global options"
    )]
    pub(crate) direct_database: Option<String>,

    /// A file holding the master keyring (`ID:BASE64` lines, the active key first), or
    /// a wrapped keyring (`tower-byok keyring wrap`), which is unwrapped through its KMS
    /// (AWS credentials, region and endpoint from the standard `AWS_*` variables).
    /// Without it, the keyring text (plain or wrapped) is read from the environment
    /// variable BYOK_MASTER_KEYS.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    pub(crate) keyring_file: Option<PathBuf>,

    /// Who makes the changes, as recorded in the audit trail.
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        default_value = "cli",
        help_heading = "Global options"
    )]
    pub(crate) actor: String,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `--pool-mode`: [`tower_byok::PoolMode`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PoolModeArg {
    /// The server itself, or a pooler in session mode.
    Session,
    /// A pooler in transaction mode.
    Transaction,
}

impl From<PoolModeArg> for tower_byok::PoolMode {
    fn from(mode: PoolModeArg) -> Self {
        match mode {
            PoolModeArg::Session => Self::Session,
            PoolModeArg::Transaction => Self::Transaction,
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Generate a master key and write it as a new keyring file (mode 0600).
    ///
    /// The key is printed only with `--out -`.
    Keygen {
        /// The key's id, stored beside every secret sealed under it.
        #[arg(long, default_value = "k1")]
        id: String,
        /// Where to write the keyring: a new file (never overwritten), or `-` for
        /// standard output.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },

    /// Start a master-key rotation: write a new keyring, a fresh key first.
    ///
    /// The current keys follow the new one, so every stored key still opens. Prints
    /// the next steps: deploy, rewrap, verify, retire.
    Rotate {
        #[command(flatten)]
        new: NewKey,
    },

    /// Store a key of a user, a team or the platform for a provider, replacing any
    /// earlier one.
    ///
    /// The secret is read from standard input when it is piped (one trailing newline
    /// is dropped), or typed at a prompt that does not echo. It is never an argument.
    Put {
        #[command(flatten)]
        owner: OwnerArg,
        /// The provider, e.g. `openai`.
        #[arg(long)]
        provider: String,
        /// Stop serving the key after this long: `30m`, `1h`, `2d`, `1w`, ...
        #[arg(long, value_name = "DURATION", value_parser = crate::time::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },

    /// List the keys of a user, a team or the platform, masked.
    List {
        #[command(flatten)]
        owner: OwnerArg,
    },

    /// Delete one key of a user, a team or the platform, or all of them.
    #[command(group(ArgGroup::new("which").required(true).args(["provider", "all"])))]
    Delete {
        #[command(flatten)]
        owner: OwnerArg,
        /// The provider whose key to delete.
        #[arg(long)]
        provider: Option<String>,
        /// Delete every key of the owner.
        #[arg(long)]
        all: bool,
    },

    /// Set when a key stops being served, or clear its expiry.
    #[command(group(ArgGroup::new("when").required(true).args(["in_", "never"])))]
    Expire {
        #[command(flatten)]
        owner: OwnerArg,
        /// The provider.
        #[arg(long)]
        provider: String,
        /// Expire this long from now (`0s` expires it at once).
        #[arg(long = "in", id = "in_", value_name = "DURATION", value_parser = crate::time::parse_duration)]
        in_: Option<std::time::Duration>,
        /// Never expire.
        #[arg(long)]
        never: bool,
    },

    /// Re-seal every key under the active master key (after a rotation), then verify.
    ///
    /// Safe while the application serves traffic, and resumable: run it again after an
    /// interruption. Exits non-zero if any key fails to open.
    Rewrap {
        /// Keys per batch.
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch: u32,
    },

    /// Open every stored key and report those that fail; changes nothing.
    ///
    /// Exits non-zero if any key fails to open.
    Verify,

    /// How many stored keys each master key seals.
    Usage,

    /// Retire a master key no stored key needs any more (after a rewrap).
    ///
    /// Then remove it from the keyring; `--out` writes the keyring without it.
    Retire {
        /// The master key id to retire.
        #[arg(long, value_name = "ID")]
        key_id: String,
        /// Also write the keyring without the retired key: a new file (never
        /// overwritten), or `-` for standard output.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },

    /// Show a team's policy, or set it with `--set`.
    ///
    /// `members-keys` (the default): a member's own key wins, the team's serves the
    /// providers the member has none for. `team-keys-only`: only the team's keys (then
    /// the platform's) serve its members.
    TeamPolicy {
        /// The team id.
        #[arg(long, value_name = "ID")]
        team: String,
        /// The policy to set.
        #[arg(long, value_name = "POLICY", value_enum)]
        set: Option<PolicyArg>,
    },

    /// Delete every key whose expiry has passed: users', teams' and the platform's.
    PurgeExpired,

    /// Show the audit trail: who changed which key, and when.
    ///
    /// Users and teams appear as keyed hashes, never by id.
    Audit {
        /// Only this user's records.
        #[arg(long, value_name = "ID", conflicts_with_all = ["team", "platform"])]
        user: Option<String>,
        /// Only this team's records (its keys and its policy).
        #[arg(long, value_name = "ID", conflicts_with = "platform")]
        team: Option<String>,
        /// Only the platform's records.
        #[arg(long)]
        platform: bool,
        /// Only records at or after this time: RFC 3339 (`2026-11-22T10:00:00Z`), a
        /// date (`2026-11-22`), or Unix seconds.
        #[arg(long, value_name = "TIME", value_parser = crate::time::parse_time)]
        since: Option<std::time::SystemTime>,
        /// Only records before this time (same forms as `--since`).
        #[arg(long, value_name = "TIME", value_parser = crate::time::parse_time)]
        until: Option<std::time::SystemTime>,
    },

    /// Import keys from a legacy file: a dry run unless `--apply` is given.
    Import {
        #[command(subcommand)]
        format: ImportFormat,
    },

    /// Wrapped keyrings: master keys encrypted under a KMS key (feature `aws-kms`).
    #[cfg(feature = "aws-kms")]
    Keyring {
        #[command(subcommand)]
        command: KeyringCommand,
    },
}

/// `tower-byok keyring ...`: wrapped keyrings on AWS KMS. Credentials, region and
/// endpoint come from the standard `AWS_*` environment variables.
#[cfg(feature = "aws-kms")]
#[derive(Debug, Subcommand)]
pub(crate) enum KeyringCommand {
    /// Wrap the plain keyring (`--keyring-file` or BYOK_MASTER_KEYS) under an AWS KMS
    /// key: each master key encrypted by KMS, the text harmless alone.
    Wrap {
        /// The AWS KMS key: key ARN, key id, alias name or alias ARN.
        #[arg(long, value_name = "ARN")]
        kms_key: String,
        /// Where to write the wrapped keyring: a new file (never overwritten), or `-`
        /// for standard output.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Add a fresh master key, wrapped under the same KMS key, as the active key of a
    /// wrapped keyring (`--keyring-file` or BYOK_MASTER_KEYS). Nothing is unwrapped.
    Rotate {
        #[command(flatten)]
        new: NewKey,
    },
}

/// The new key of a rotation (`rotate`, `keyring rotate`) and where the keyring goes.
#[derive(Debug, Args)]
pub(crate) struct NewKey {
    /// The new key's id.
    #[arg(long, value_name = "NEW_ID")]
    pub(crate) id: String,
    /// Where to write the new keyring (wrapped if the current one is): a new file (never
    /// overwritten), or `-` for standard output.
    #[arg(long, value_name = "PATH")]
    pub(crate) out: PathBuf,
}

/// Whose keys a command is about: exactly one of `--user`, `--team` and `--platform`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct OwnerArg {
    /// The user id.
    #[arg(long, value_name = "ID")]
    pub(crate) user: Option<String>,
    /// A team id: the team's keys, served to its members.
    #[arg(long, value_name = "ID")]
    pub(crate) team: Option<String>,
    /// The platform's own keys, served when neither the user nor the team has one (if
    /// the application turns the platform fallback on).
    #[arg(long)]
    pub(crate) platform: bool,
}

impl OwnerArg {
    /// The owner named, and how messages name it ("the user", "the team", "the
    /// platform"): never by its id.
    pub(crate) fn owner(&self) -> (tower_byok::Owner<'_>, &'static str) {
        match (&self.user, &self.team) {
            (Some(user), _) => (tower_byok::Owner::user(user), "the user"),
            (None, Some(team)) => (tower_byok::Owner::team(team), "the team"),
            (None, None) => (tower_byok::Owner::platform(), "the platform"),
        }
    }
}

/// `--set` of `team-policy`: [`tower_byok::TeamPolicy`] on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PolicyArg {
    /// A member's own key wins; the team's serves the providers the member has none for.
    MembersKeys,
    /// Only the team's keys (then the platform's) serve its members.
    TeamKeysOnly,
}

impl From<PolicyArg> for tower_byok::TeamPolicy {
    fn from(policy: PolicyArg) -> Self {
        match policy {
            PolicyArg::MembersKeys => Self::MembersKeysFirst,
            PolicyArg::TeamKeysOnly => Self::TeamKeysOnly,
        }
    }
}

/// The legacy file formats.
#[derive(Debug, Subcommand)]
pub(crate) enum ImportFormat {
    /// A `.env` file of one user: `OPENAI_API_KEY=...` and other `*_API_KEY` variables.
    Env {
        /// The user the keys belong to.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        opts: ImportOpts,
    },
    /// A users JSON file with per-user `api_keys` maps.
    UsersJson {
        #[command(flatten)]
        opts: ImportOpts,
    },
    /// An onboarding progress JSON file (`steps[].data.api_keys`), which names no user.
    Onboarding {
        /// The user the keys belong to.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        opts: ImportOpts,
    },
}

/// What every import takes.
#[derive(Debug, Args)]
pub(crate) struct ImportOpts {
    /// The file to import.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// Write the keys (without it, only show what would be imported).
    #[arg(long)]
    pub(crate) apply: bool,
    /// Replace a user's stored key when the file holds a different one.
    #[arg(long, requires = "apply")]
    pub(crate) replace_different: bool,
    /// Remove the file after a verified import (it is first copied to
    /// `FILE.bak-<unix-seconds>`, mode 0600).
    #[arg(long, requires = "apply")]
    pub(crate) remove_source: bool,
}

/// Reports a command line that does not parse, and returns exit code 2 (0 for `--help`
/// and `--version`).
///
/// clap's own messages quote what was typed (`unexpected argument 'sk-...' found`); a
/// secret given as an argument by mistake would be printed back. So a message that
/// could quote input is replaced by one that names the problem and the argument only.
pub(crate) fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};

    let quotes_input = !matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            | ErrorKind::MissingRequiredArgument
            | ErrorKind::MissingSubcommand
            | ErrorKind::ArgumentConflict
    );
    if !quotes_input {
        // Names of arguments and the usage only.
        let _ = err.print();
        return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
    }
    let what = match err.kind() {
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => "invalid value",
        kind => kind.as_str().unwrap_or("invalid command line"),
    };
    // The argument's name, for errors about an argument's value; an unknown argument or
    // subcommand is itself the input, so it is never named.
    let arg = match (err.kind(), err.get(ContextKind::InvalidArg)) {
        (ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand, _) => None,
        (_, Some(ContextValue::String(name))) => Some(name.clone()),
        _ => None,
    };
    // This tool's value parsers explain what they expect without quoting the value.
    let why = match err.kind() {
        ErrorKind::ValueValidation => std::error::Error::source(err).map(|e| format!(": {e}")),
        _ => None,
    }
    .unwrap_or_default();
    match arg {
        Some(arg) => eprintln!("error: {what} for '{arg}'{why}"),
        None => eprintln!("error: {what}{why}"),
    }
    if matches!(
        err.kind(),
        ErrorKind::UnknownArgument | ErrorKind::InvalidSubcommand
    ) {
        eprintln!(
            "  (what was typed is not repeated here. Secrets are never taken as arguments: \
             pipe them to standard input or type them at the prompt.)"
        );
    }
    let rendered = err.render().to_string();
    if let Some(usage) = rendered.lines().find(|l| l.starts_with("Usage:")) {
        eprintln!("\n{usage}");
    }
    eprintln!("\nFor more information, try '--help'.");
    ExitCode::from(2)
}
