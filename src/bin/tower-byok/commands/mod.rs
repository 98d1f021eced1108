//! What each subcommand does.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use tower_byok::{Keyring, PoolMode, PostgresStore, SqliteStore, Vault, WrappedKeyring};

use crate::cli::{Cli, Command};
use crate::files::{self};
use crate::{CmdResult, Fail};

mod audit;
mod import;
mod keys;
mod master_keys;
mod rotation;
mod wrapped;

/// The environment variable the keyring text is read from without `--keyring-file`.
const KEYRING_VAR: &str = "BYOK_MASTER_KEYS";

/// Runs the command line.
pub(crate) async fn run(cli: Cli) -> CmdResult {
    let Cli {
        database,
        pool_mode,
        direct_database,
        keyring_file,
        actor,
        command,
    } = cli;
    let keyring_file = keyring_file.as_deref();
    match command {
        Command::Keygen { id, out } => master_keys::keygen(&id, &out),
        Command::Rotate {
            new: crate::cli::NewKey { id, out },
        } => {
            if read_wrapped(keyring_file)?.is_some() {
                return Err(Fail::new(
                    "the keyring is wrapped: `tower-byok keyring rotate` adds a key and keeps \
                     it wrapped",
                ));
            }
            master_keys::rotate(&load_keyring(keyring_file)?, &id, &out)
        }
        #[cfg(feature = "aws-kms")]
        Command::Keyring { command } => wrapped::run(command, keyring_file).await,
        command => {
            let wrapped = read_wrapped(keyring_file)?;
            let keyring = match &wrapped {
                Some(wrapped) => wrapped::unwrap(wrapped).await?,
                None => load_keyring(keyring_file)?,
            };
            let database = Database {
                url: database.as_deref(),
                pool_mode: pool_mode.into(),
                direct_url: direct_database.as_deref(),
            };
            let vault = open_vault(&database, keyring, &actor).await?;
            on_vault(&vault, command, wrapped.as_ref()).await
        }
    }
}

async fn on_vault(vault: &Vault, command: Command, wrapped: Option<&WrappedKeyring>) -> CmdResult {
    match command {
        Command::Put {
            owner,
            provider,
            expires_in,
        } => keys::put(vault, owner.owner(), &provider, expires_in).await,
        Command::List { owner } => keys::list(vault, owner.owner()).await,
        Command::Delete {
            owner,
            provider,
            all,
        } => keys::delete(vault, owner.owner(), provider.as_deref(), all).await,
        Command::Expire {
            owner,
            provider,
            in_,
            never,
        } => {
            keys::expire(
                vault,
                owner.owner(),
                &provider,
                if never { None } else { in_ },
            )
            .await
        }
        Command::TeamPolicy { team, set } => keys::team_policy(vault, &team, set).await,
        Command::Rewrap { batch } => rotation::rewrap(vault, batch).await,
        Command::Verify => {
            let report = rotation::verify(vault).await?;
            rotation::fail_on_unopened(report.failed.len())
        }
        Command::Usage => rotation::usage(vault).await,
        Command::Retire { key_id, out } => match wrapped {
            Some(wrapped) => wrapped::retire(vault, wrapped, &key_id, out.as_deref()).await,
            None => master_keys::retire(vault, &key_id, out.as_deref()).await,
        },
        Command::PurgeExpired => {
            let purged = vault.purge_expired().await?;
            println!("purged {purged} expired {}", plural(purged, "key", "keys"));
            Ok(())
        }
        Command::Audit {
            user,
            team,
            platform,
            since,
            until,
        } => {
            let owner = match (&user, &team) {
                (Some(user), _) => Some(tower_byok::Owner::user(user)),
                (None, Some(team)) => Some(tower_byok::Owner::team(team)),
                (None, None) => platform.then(tower_byok::Owner::platform),
            };
            audit::audit(vault, owner, since, until).await
        }
        Command::Import { format } => import::import(vault, format).await,
        #[cfg(feature = "aws-kms")]
        Command::Keyring { .. } => Err(Fail::new(
            "internal error: a keyring command reached the vault",
        )),
        Command::Keygen { .. } | Command::Rotate { .. } => Err(Fail::new(
            "internal error: a keyring command reached the vault",
        )),
    }
}

// ----- keyring and database -----

/// The keyring of `--keyring-file` or BYOK_MASTER_KEYS when it is a wrapped keyring
/// (told by its first line), parsed; `None` for a plain one (or none at all).
fn read_wrapped(file: Option<&Path>) -> CmdResult<Option<WrappedKeyring>> {
    let text = match file {
        // An unreadable file is reported by the plain keyring's loader.
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => zeroize::Zeroizing::new(text),
            Err(_) => return Ok(None),
        },
        None => match std::env::var(KEYRING_VAR) {
            Ok(text) => zeroize::Zeroizing::new(text),
            Err(_) => return Ok(None),
        },
    };
    if !text.starts_with("tower-byok wrapped-keyring ") {
        return Ok(None);
    }
    if let Some(path) = file {
        files::warn_if_readable_by_others(path);
    }
    Ok(Some(WrappedKeyring::parse(&text)?))
}

fn load_keyring(file: Option<&Path>) -> CmdResult<Keyring> {
    match file {
        Some(path) => {
            files::warn_if_readable_by_others(path);
            Ok(Keyring::from_file(path)?)
        }
        None if std::env::var_os(KEYRING_VAR).is_some() => Ok(Keyring::from_env(KEYRING_VAR)?),
        None => Err(Fail::new(format!(
            "no master keyring: pass --keyring-file PATH or set {KEYRING_VAR} \
             (`tower-byok keygen --out PATH` makes one)"
        ))),
    }
}

/// Where the vault is, from the global options.
struct Database<'a> {
    url: Option<&'a str>,
    pool_mode: PoolMode,
    direct_url: Option<&'a str>,
}

async fn open_vault(database: &Database<'_>, keyring: Keyring, actor: &str) -> CmdResult<Vault> {
    let url = database
        .url
        .ok_or_else(|| Fail::new("no database: pass --database URL or set BYOK_DATABASE_URL"))?;
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    let opened = match scheme.as_deref() {
        Some("sqlite") => {
            let store = SqliteStore::connect(url)
                .await
                .map_err(|e| connect_fail(&e, url))?;
            // A command serves nothing from the cache: it needs no change feed (and on
            // PostgreSQL no listening connection of its own).
            Vault::builder(store, keyring)
                .watch_changes(false)
                .open()
                .await
        }
        Some("postgres" | "postgresql") => {
            let mut store = connect_postgres(url).await?.pool_mode(database.pool_mode);
            if let Some(direct) = database.direct_url {
                store = store.direct_url(direct).map_err(|e| {
                    Fail::new(format!("--direct-database / BYOK_DIRECT_DATABASE_URL: {e}"))
                })?;
            }
            Vault::builder(store, keyring)
                .watch_changes(false)
                .open()
                .await
        }
        _ => {
            return Err(Fail::new(
                "unsupported database URL (--database / BYOK_DATABASE_URL): expected \
                 sqlite://PATH?mode=rwc, sqlite:PATH or postgres://USER@HOST/DB",
            ))
        }
    };
    let vault = opened.map_err(|e| Fail::from(e).context("opening the vault"))?;
    Ok(vault.with_actor(actor)?)
}

/// How long connecting to PostgreSQL may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to PostgreSQL, trying one connection first: a pool retries an unreachable
/// server until its timeout and then reports only the timeout, not why.
async fn connect_postgres(url: &str) -> CmdResult<PostgresStore> {
    use sqlx::Connection as _;
    let fail = |e: sqlx::Error| {
        let err = tower_byok::Error::from(tower_byok::ErrorKind::Store);
        connect_fail_with(&err, Some(&e), url)
    };
    // PgBouncer refuses start-up parameters it does not track; nothing here reads a float.
    let options = PgConnectOptions::from_str(url)
        .map_err(fail)?
        .extra_float_digits(None);
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| {
            Fail::new(format!(
                "could not open the database (--database / BYOK_DATABASE_URL): no answer from \
                 the server within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(fail)?;
    let _ = probe.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(fail)?;
    Ok(PostgresStore::from_pool(pool))
}

/// The error of a failed connection, with its causes (the driver's message says what is
/// wrong: no such file, connection refused, authentication failed), never the URL's
/// password.
fn connect_fail(err: &tower_byok::Error, url: &str) -> Fail {
    connect_fail_with(err, None, url)
}

fn connect_fail_with(
    err: &tower_byok::Error,
    cause: Option<&(dyn std::error::Error + 'static)>,
    url: &str,
) -> Fail {
    let mut message = err.to_string();
    let mut source = cause.or_else(|| std::error::Error::source(err));
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    if let Some(password) = url_password(url).filter(|p| !p.is_empty()) {
        message = message.replace(password, "***");
    }
    Fail::new(message).context("could not open the database (--database / BYOK_DATABASE_URL)")
}

/// The password of `scheme://user:password@host/...`, if the URL has one.
fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, password)| password)
}

// ----- text -----

fn plural<'a, N: PartialEq + From<u8>>(n: N, one: &'a str, many: &'a str) -> &'a str {
    if n == N::from(1) {
        one
    } else {
        many
    }
}

fn quoted_list(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| format!("`{id}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::url_password;

    #[test]
    fn finds_the_password_of_a_url() {
        assert_eq!(
            url_password("postgres://u:p%40ss@h:5432/db"),
            Some("p%40ss")
        );
        assert_eq!(url_password("postgres://u:pw@h/db?x=a@b"), Some("pw"));
        assert_eq!(url_password("postgres://u@h/db"), None);
        assert_eq!(url_password("sqlite://keys.db?mode=rwc"), None);
        assert_eq!(url_password("postgres://h/db"), None);
    }
}
