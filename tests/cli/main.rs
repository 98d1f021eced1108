//! The `tower-byok` admin binary, run as a process against real databases (a SQLite file,
//! and PostgreSQL with `--features postgres`): key generation, storing and listing keys,
//! rotation, expiry, the audit trail, legacy import, teams' and the platform's keys, and
//! errors. After every command, its
//! standard output and standard error are checked for every secret and master key the
//! test has used: none may ever appear.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod errors;
mod expiry;
mod feed;
mod import;
mod keys;
mod kms;
mod master_keys;
mod rotation;
mod teams;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use common::Backend;
use tower_byok::{Keyring, PostgresStore, SqliteStore, Vault};

const BIN: &str = env!("CARGO_BIN_EXE_tower-byok");

/// What one run of the binary printed.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "command failed: {self:#?}");
        self
    }

    #[track_caller]
    fn fails(self, code: i32, stderr_has: &str) -> Self {
        assert_eq!(self.code, Some(code), "unexpected exit code: {self:#?}");
        assert!(
            self.stderr.contains(stderr_has),
            "stderr lacks {stderr_has:?}: {self:#?}"
        );
        if code == 1 {
            assert!(
                self.stderr.lines().any(|l| l.starts_with("error: ")),
                "{self:#?}"
            );
        }
        self
    }

    #[track_caller]
    fn says(&self, text: &str) -> &Self {
        assert!(
            self.stdout.contains(text),
            "stdout lacks {text:?}: {self:#?}"
        );
        self
    }
}

/// A working directory, a database and the secrets that must never be printed.
struct Env {
    backend: Backend,
    dir: tempfile::TempDir,
    /// What the binary is given: behind a pooler, the pooler's URL.
    url: String,
    /// The server's own URL, for the test's raw SQL.
    direct_url: String,
    /// Behind a pooler: its mode, given to the binary as `BYOK_POOL_MODE`.
    #[cfg(feature = "postgres")]
    pooler: Option<tower_byok::PoolMode>,
    secrets: Mutex<Vec<String>>,
}

impl Env {
    async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        #[cfg(feature = "postgres")]
        let mut pooler = None;
        let (url, direct_url) = match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display());
                (url.clone(), url)
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let db = common::TestDb::new(backend).await;
                pooler = db.pooler;
                (db.pooled_url(), db.pg_url())
            }
        };
        Self {
            backend,
            dir,
            url,
            direct_url,
            #[cfg(feature = "postgres")]
            pooler,
            secrets: Mutex::new(Vec::new()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Remembers a value that no output may contain, and returns it.
    fn secret(&self, value: &str) -> String {
        self.secrets.lock().unwrap().push(value.to_owned());
        value.to_owned()
    }

    /// Runs the binary in the working directory with the database in
    /// `BYOK_DATABASE_URL`, no keyring in the environment, `stdin` piped in (or none),
    /// and checks that no remembered secret was printed.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let out = self.run_unchecked(args, stdin, &[]);
        self.check(&out);
        out
    }

    fn run_with_env(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
        let out = self.run_unchecked(args, stdin, env);
        self.check(&out);
        out
    }

    fn run_unchecked(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("BYOK_DATABASE_URL", &self.url)
            .env_remove("BYOK_POOL_MODE")
            .env_remove("BYOK_DIRECT_DATABASE_URL")
            .env_remove("BYOK_MASTER_KEYS")
            .env_remove("RUST_LOG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(feature = "postgres")]
        if self.pooler == Some(tower_byok::PoolMode::Transaction) {
            cmd.env("BYOK_POOL_MODE", "transaction");
        }
        for (name, value) in env {
            if value.is_empty() {
                cmd.env_remove(name);
            } else {
                cmd.env(name, value);
            }
        }
        let mut child = cmd.spawn().expect("run tower-byok");
        if let Some(input) = stdin {
            use std::io::Write as _;
            let mut pipe = child.stdin.take().unwrap();
            // The command may exit without reading (a command line that does not parse).
            let _ = pipe.write_all(input.as_bytes());
        }
        let output = child.wait_with_output().unwrap();
        Out {
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    #[track_caller]
    fn check(&self, out: &Out) {
        for secret in self.secrets.lock().unwrap().iter() {
            assert!(
                !out.stdout.contains(secret.as_str()) && !out.stderr.contains(secret.as_str()),
                "a secret was printed: {out:#?}"
            );
        }
    }

    /// `keygen --id ID --out NAME`, remembering the key material as a secret.
    fn keygen(&self, id: &str, name: &str) {
        self.run(&["keygen", "--id", id, "--out", name], None).ok();
        self.remember_keys(name);
    }

    /// Remembers the base64 of every key in a keyring file.
    fn remember_keys(&self, name: &str) {
        let text = std::fs::read_to_string(self.path(name)).unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, key) = line.split_once(':').unwrap();
            self.secret(key.trim());
        }
    }

    /// Stores a key through the binary, with the secret on standard input.
    fn put(&self, keyring: &str, user: &str, provider: &str, secret: &str) -> Out {
        let secret = self.secret(secret);
        self.run(
            &[
                "--keyring-file",
                keyring,
                "put",
                "--user",
                user,
                "--provider",
                provider,
            ],
            Some(&format!("{secret}\n")),
        )
        .ok()
    }

    /// Opens the database through the library, as an application would.
    async fn vault(&self, keyring: &str) -> tower_byok::Result<Vault> {
        let keyring = Keyring::from_file(self.path(keyring))?;
        match self.backend {
            Backend::Sqlite => Vault::open(SqliteStore::connect(&self.url).await?, keyring).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let store = PostgresStore::connect(&self.url)
                    .await?
                    .pool_mode(self.pooler.unwrap_or_default());
                Vault::open(store, keyring).await
            }
        }
    }

    /// Flips a bit of one stored key's sealed blob, as an attacker with database access
    /// could.
    async fn tamper(&self, user: &str, provider: &str) {
        const SELECT: &str = "SELECT sealed FROM byok_keys WHERE user_id = $1 AND provider = $2";
        const UPDATE: &str =
            "UPDATE byok_keys SET sealed = $3 WHERE user_id = $1 AND provider = $2";
        match self.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
                let mut blob: Vec<u8> = sqlx::query_scalar(SELECT)
                    .bind(user)
                    .bind(provider)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                let last = blob.len() - 1;
                blob[last] ^= 1;
                sqlx::query(UPDATE)
                    .bind(user)
                    .bind(provider)
                    .bind(blob)
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.direct_url).await.unwrap();
                let mut blob: Vec<u8> = sqlx::query_scalar(SELECT)
                    .bind(user)
                    .bind(provider)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                let last = blob.len() - 1;
                blob[last] ^= 1;
                sqlx::query(UPDATE)
                    .bind(user)
                    .bind(provider)
                    .bind(blob)
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
        }
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn mode(_: &Path) -> u32 {
    0o600
}
