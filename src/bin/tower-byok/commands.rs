//! What each subcommand does.

use std::io::IsTerminal as _;
use std::path::Path;
use std::str::FromStr as _;
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use tower_byok::import::{self, ApplyOptions, KeyStatus, LegacyFormat};
use tower_byok::{
    AuditAction, Keyring, MasterKey, PostgresStore, Progress, RowFailure, SqliteStore, Vault,
    VerifyReport,
};
use zeroize::Zeroizing;

use crate::cli::{Cli, Command, ImportFormat, ImportOpts};
use crate::files::{self, Written};
use crate::{secret, table, time, CmdResult, Fail};

/// The environment variable the keyring text is read from without `--keyring-file`.
const KEYRING_VAR: &str = "BYOK_MASTER_KEYS";

/// Runs the command line.
pub(crate) async fn run(cli: Cli) -> CmdResult {
    let Cli {
        database,
        keyring_file,
        actor,
        command,
    } = cli;
    let keyring_file = keyring_file.as_deref();
    match command {
        Command::Keygen { id, out } => keygen(&id, &out),
        Command::Rotate { id, out } => rotate(&load_keyring(keyring_file)?, &id, &out),
        command => {
            let keyring = load_keyring(keyring_file)?;
            let vault = open_vault(database.as_deref(), keyring, &actor).await?;
            on_vault(&vault, command).await
        }
    }
}

async fn on_vault(vault: &Vault, command: Command) -> CmdResult {
    match command {
        Command::Put {
            user,
            provider,
            expires_in,
        } => put(vault, &user, &provider, expires_in).await,
        Command::List { user } => list(vault, &user).await,
        Command::Delete {
            user,
            provider,
            all,
        } => delete(vault, &user, provider.as_deref(), all).await,
        Command::Expire {
            user,
            provider,
            in_,
            never,
        } => expire(vault, &user, &provider, if never { None } else { in_ }).await,
        Command::Rewrap { batch } => rewrap(vault, batch).await,
        Command::Verify => {
            let report = verify(vault).await?;
            fail_on_unopened(report.failed.len())
        }
        Command::Usage => usage(vault).await,
        Command::Retire { key_id, out } => retire(vault, &key_id, out.as_deref()).await,
        Command::PurgeExpired => {
            let purged = vault.purge_expired().await?;
            println!("purged {purged} expired {}", plural(purged, "key", "keys"));
            Ok(())
        }
        Command::Audit { user, since, until } => audit(vault, user.as_deref(), since, until).await,
        Command::Import { format } => import(vault, format).await,
        Command::Keygen { .. } | Command::Rotate { .. } => Err(Fail::new(
            "internal error: a keyring command reached the vault",
        )),
    }
}

// ----- keyring and database -----

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

async fn open_vault(url: Option<&str>, keyring: Keyring, actor: &str) -> CmdResult<Vault> {
    let url =
        url.ok_or_else(|| Fail::new("no database: pass --database URL or set BYOK_DATABASE_URL"))?;
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    let opened = match scheme.as_deref() {
        Some("sqlite") => {
            let store = SqliteStore::connect(url)
                .await
                .map_err(|e| connect_fail(&e, url))?;
            Vault::open(store, keyring).await
        }
        Some("postgres" | "postgresql") => {
            let store = connect_postgres(url).await?;
            Vault::open(store, keyring).await
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
    let options = PgConnectOptions::from_str(url).map_err(fail)?;
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

// ----- master keys -----

/// The keyring as the text of a new file, with a comment saying what it is.
fn keyring_file_text(keyring: &Keyring) -> Zeroizing<String> {
    let mut text = Zeroizing::new(format!(
        "# tower-byok master keyring, written {}.\n\
         # The first key seals new secrets; every key opens the secrets sealed under it.\n",
        time::format(SystemTime::now())
    ));
    text.push_str(&keyring.expose_text());
    text
}

/// The keyring as one line, `id:key,id:key`, as `BYOK_MASTER_KEYS` takes it.
fn keyring_line(keyring: &Keyring) -> Zeroizing<String> {
    let mut line = Zeroizing::new(String::new());
    for key in keyring.ids().filter_map(|id| keyring.get(id)) {
        if !line.is_empty() {
            line.push(',');
        }
        line.push_str(&key.expose_keyring_line());
    }
    line.push('\n');
    line
}

fn write_keyring(keyring: &Keyring, out: &Path) -> CmdResult<Written> {
    if out == Path::new("-") {
        files::write_key_material(out, &keyring_line(keyring))
    } else {
        files::write_key_material(out, &keyring_file_text(keyring))
    }
}

fn keygen(id: &str, out: &Path) -> CmdResult {
    let keyring = Keyring::new(MasterKey::generate(id)?);
    match write_keyring(&keyring, out)? {
        Written::Stdout => eprintln!(
            "the line above is master key `{id}`: keep it in a secret manager; \
             secrets sealed under it cannot be opened without it"
        ),
        Written::File => {
            let path = out.display();
            println!("wrote master key `{id}` to {path} (mode 0600)");
            println!(
                "use it with --keyring-file {path}, or put its contents in {KEYRING_VAR}; \
                 keep a backup: secrets sealed under it cannot be opened without it"
            );
        }
    }
    Ok(())
}

fn rotate(current: &Keyring, id: &str, out: &Path) -> CmdResult {
    if current.get(id).is_some() {
        return Err(Fail::new(format!(
            "the keyring already holds a key `{id}`: choose another --id"
        )));
    }
    let mut next = Keyring::new(MasterKey::generate(id)?);
    for old in current.ids().filter_map(|old| current.get(old)) {
        next = next.with_key(old.clone())?;
    }
    let written = write_keyring(&next, out)?;
    let old_ids: Vec<&str> = current.ids().collect();
    let (keyring_opt, where_) = match written {
        Written::File => (
            format!("--keyring-file {}", out.display()),
            format!("wrote the new keyring to {} (mode 0600)", out.display()),
        ),
        Written::Stdout => (
            String::new(),
            "the line above is the new keyring".to_owned(),
        ),
    };
    let opt = if keyring_opt.is_empty() {
        String::new()
    } else {
        format!(" {keyring_opt}")
    };
    let steps = format!(
        "{where_}: `{id}` (new, active) first, then {}.\n\
         next steps:\n  \
         1. deploy it to every instance (as {KEYRING_VAR} or its file): new keys are then sealed \
         under `{id}`, and keys sealed under the old ones still open\n  \
         2. tower-byok{opt} rewrap     (re-seals every key under `{id}`, then verifies)\n  \
         3. tower-byok{opt} verify\n  \
         4. {}, then remove the retired keys from the keyring and deploy again",
        quoted_list(&old_ids),
        old_ids
            .iter()
            .map(|old| format!("tower-byok{opt} retire --key-id {old}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    match written {
        Written::File => println!("{steps}"),
        // Standard output holds the keyring: keep it clean for `$(...)`.
        Written::Stdout => eprintln!("{steps}"),
    }
    Ok(())
}

async fn retire(vault: &Vault, key_id: &str, out: Option<&Path>) -> CmdResult {
    vault.retire_master_key(key_id).await?;
    let keyring = vault.keyring();
    let rest: Vec<&MasterKey> = keyring
        .ids()
        .filter(|id| *id != key_id)
        .filter_map(|id| keyring.get(id))
        .collect();
    let Some(out) = out else {
        println!(
            "retired `{key_id}`: no stored key needs it. Remove it from the keyring and deploy \
             (or run again with --out PATH to write the keyring without it)"
        );
        return Ok(());
    };
    let mut remaining = rest.iter().map(|k| (*k).clone());
    let Some(first) = remaining.next() else {
        return Err(Fail::new("internal error: the keyring has no key left"));
    };
    let mut without = Keyring::new(first);
    for key in remaining {
        without = without.with_key(key)?;
    }
    let written = write_keyring(&without, out)?;
    let message = match written {
        Written::File => format!(
            "retired `{key_id}`: wrote the keyring without it to {} (mode 0600); deploy it",
            out.display()
        ),
        Written::Stdout => {
            format!("retired `{key_id}`: the line above is the keyring without it; deploy it")
        }
    };
    match written {
        Written::File => println!("{message}"),
        Written::Stdout => eprintln!("{message}"),
    }
    Ok(())
}

// ----- users' keys -----

async fn put(vault: &Vault, user: &str, provider: &str, expires_in: Option<Duration>) -> CmdResult {
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

async fn list(vault: &Vault, user: &str) -> CmdResult {
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

async fn delete(vault: &Vault, user: &str, provider: Option<&str>, all: bool) -> CmdResult {
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

async fn expire(vault: &Vault, user: &str, provider: &str, after: Option<Duration>) -> CmdResult {
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

// ----- rotation -----

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

async fn rewrap(vault: &Vault, batch: u32) -> CmdResult {
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
async fn verify(vault: &Vault) -> CmdResult<VerifyReport> {
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

fn fail_on_unopened(failed: usize) -> CmdResult {
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

async fn usage(vault: &Vault) -> CmdResult {
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

// ----- audit -----

async fn audit(
    vault: &Vault,
    user: Option<&str>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> CmdResult {
    let records = match user {
        None => vault.audit_log(since, until).await?,
        Some(user) => {
            // The vault reads one user's trail whole; the time window is applied here.
            let (since, until) = (since.map(time::unix_ms), until.map(time::unix_ms));
            vault
                .audit_trail(user)
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

// ----- import -----

async fn import(vault: &Vault, format: ImportFormat) -> CmdResult {
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
