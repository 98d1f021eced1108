//! Start-up: settings from the environment, one pool for the vault and the app's own
//! tables, the app's migrations, the first-start legacy import, then serving.

use std::error::Error;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tower_byok::store::KeyStore;
use tower_byok::{check, Keyring, MasterKey, SqliteStore, Vault};

use super::app::{app, AppState};
use super::auth::Tokens;
use super::db::Db;

const DEV_KEYRING_FILE: &str = "onboarding-dev-keyring.txt";
/// The development token secret, next to the SQLite database (or in the working
/// directory for PostgreSQL).
const DEV_TOKEN_SECRET_FILE: &str = "onboarding-token-secret.txt";

/// Every setting, from environment variables; each has a default that needs no setup.
#[derive(Clone, Debug)]
#[cfg_attr(
    not(feature = "import"),
    allow(dead_code, reason = "the legacy settings")
)]
pub(crate) struct Config {
    /// `DATABASE_URL`: `postgres://...` for PostgreSQL, else a `sqlite:` URL.
    pub(crate) database_url: String,
    /// `ONBOARDING_ADDR`, `127.0.0.1:3000` by default.
    pub(crate) addr: String,
    /// `ONBOARDING_LEGACY_FILE`, `.onboarding_progress.json` by default.
    pub(crate) legacy_file: PathBuf,
    /// `ONBOARDING_LEGACY_USER`: whose progress the legacy file holds.
    pub(crate) legacy_user: Option<String>,
    /// `ONBOARDING_LEGACY_IMPORT=apply` imports it; otherwise a dry run.
    pub(crate) legacy_apply: bool,
}

impl Config {
    pub(crate) fn from_env() -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        Self {
            database_url: var("DATABASE_URL", "sqlite://onboarding.db?mode=rwc"),
            addr: var("ONBOARDING_ADDR", "127.0.0.1:3000"),
            legacy_file: var("ONBOARDING_LEGACY_FILE", ".onboarding_progress.json").into(),
            legacy_user: std::env::var("ONBOARDING_LEGACY_USER").ok(),
            legacy_apply: std::env::var("ONBOARDING_LEGACY_IMPORT").as_deref() == Ok("apply"),
        }
    }
}

/// Opens the database, the vault on the same pool, and runs the app's migrations.
pub(crate) async fn open(config: &Config) -> Result<AppState, Box<dyn Error>> {
    let keyring = keyring()?;
    let url = &config.database_url;
    let (db, vault) = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        #[cfg(feature = "postgres")]
        {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?;
            let store = tower_byok::PostgresStore::from_pool(pool.clone());
            (Db::Postgres(pool), open_vault(store, keyring).await?)
        }
        #[cfg(not(feature = "postgres"))]
        return Err(
            "a PostgreSQL DATABASE_URL needs the example built with `--features postgres`".into(),
        );
    } else {
        // The settings the vault advises for a pool it is handed: WAL, full sync, a busy timeout.
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let store = SqliteStore::from_pool(pool.clone());
        (Db::Sqlite(pool), open_vault(store, keyring).await?)
    };
    db.migrate().await?;
    let secret_dir = match &db {
        Db::Sqlite(pool) => (pool.connect_options().get_filename().parent())
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(Path::to_path_buf),
        #[cfg(feature = "postgres")]
        Db::Postgres(_) => None,
    };
    let secret_file = secret_dir.unwrap_or_default().join(DEV_TOKEN_SECRET_FILE);
    Ok(AppState {
        vault,
        db,
        tokens: tokens(&secret_file)?,
    })
}

/// The vault, with a format check for each required provider (a real app could add
/// `check::live` to ask the provider whether the key works).
async fn open_vault(store: impl KeyStore, keyring: Keyring) -> tower_byok::Result<Vault> {
    let exa = check::format(|key: &str| {
        let uuid = key.len() == 36 && key.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if uuid {
            Ok(())
        } else {
            Err("an Exa key is a 36-character UUID")
        }
    });
    Vault::builder(store, keyring)
        .check("gemini", check::gemini())
        .check("exa", exa)
        .open()
        .await
}

/// Starts the app and serves until the process ends.
pub(crate) async fn run(config: Config) -> Result<(), Box<dyn Error>> {
    let state = open(&config).await?;
    #[cfg(feature = "import")]
    super::legacy::import_on_start(
        &state,
        &config.legacy_file,
        config.legacy_user.as_deref(),
        config.legacy_apply,
    )
    .await?;
    #[cfg(not(feature = "import"))]
    if config.legacy_file.exists() {
        println!(
            "found {}: build with `--features import` to import it",
            config.legacy_file.display()
        );
    }
    let listener = tokio::net::TcpListener::bind(&config.addr).await?;
    let addr = listener.local_addr()?;
    let backend = if matches!(state.db, Db::Sqlite(_)) {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    println!("onboarding example listening on http://{addr} ({backend})");
    println!(
        "Open http://{addr}/ in a browser, or with curl:\n  \
         TOKEN=$(curl -s {addr}/login -d user=alice | cut -d'\"' -f4)\n  \
         curl {addr}/onboarding/progress -H \"Authorization: Bearer $TOKEN\"\n  \
         curl {addr}/onboarding/keys -H \"Authorization: Bearer $TOKEN\" \
         -d gemini=AIzaSyDemo{zeros} -d exa=00000000-0000-4000-8000-000000000000",
        zeros = "0".repeat(29)
    );
    axum::serve(listener, app(state)).await?;
    Ok(())
}

/// `BYOK_MASTER_KEYS` if set (production), else a development keyring file.
fn keyring() -> Result<Keyring, Box<dyn Error>> {
    if std::env::var_os("BYOK_MASTER_KEYS").is_some() {
        return Ok(Keyring::from_env("BYOK_MASTER_KEYS")?);
    }
    let path = Path::new(DEV_KEYRING_FILE);
    if !path.exists() {
        let keyring = Keyring::new(MasterKey::generate("dev-1")?);
        write_private(path, &keyring.expose_text())?;
    }
    eprintln!("WARNING: master keyring from ./{DEV_KEYRING_FILE}, for development only; set BYOK_MASTER_KEYS in production");
    Ok(Keyring::from_file(path)?)
}

/// `ONBOARDING_TOKEN_SECRET` (at least 32 bytes) if set (production), else a development
/// secret generated into `file` on first start, so that a restart keeps everyone signed
/// in, as the development keyring keeps their keys.
fn tokens(file: &Path) -> Result<Tokens, Box<dyn Error>> {
    if let Ok(secret) = std::env::var("ONBOARDING_TOKEN_SECRET") {
        if secret.len() < 32 {
            return Err("ONBOARDING_TOKEN_SECRET must be at least 32 bytes".into());
        }
        return Ok(Tokens::new(secret.as_bytes()));
    }
    if !file.exists() {
        let mut secret = [0; 32];
        getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        write_private(file, &hex)?;
    }
    let secret = std::fs::read_to_string(file)?;
    let secret = secret.trim();
    if secret.len() < 32 {
        return Err(format!("{} must hold at least 32 bytes", file.display()).into());
    }
    eprintln!(
        "WARNING: ONBOARDING_TOKEN_SECRET is not set; sign-ins are signed with the development \
         secret in {}, for development only; set ONBOARDING_TOKEN_SECRET in production",
        file.display()
    );
    Ok(Tokens::new(secret.as_bytes()))
}

/// Creates `path` with `text`, readable by its owner only; never overwrites a file.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    file.open(path)?.write_all(text.as_bytes())
}
