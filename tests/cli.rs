//! The `tower-byok` admin binary, run as a process against real databases (a SQLite file,
//! and PostgreSQL with `--features postgres`): key generation, storing and listing keys,
//! rotation, expiry, the audit trail, legacy import and errors. After every command, its
//! standard output and standard error are checked for every secret and master key the
//! test has used: none may ever appear.
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use common::Backend;
use tower_byok::{Keyring, PostgresStore, SqliteStore, Vault};

const BIN: &str = env!("CARGO_BIN_EXE_tower-byok");

per_backend!(
    put_list_delete_never_show_the_secret,
    a_secret_given_as_an_argument_is_refused_and_not_echoed,
    rotate_rewrap_verify_retire,
    rewrap_and_verify_fail_on_a_key_that_does_not_open,
    expiring_and_purging,
    audit_shows_what_happened_without_secrets_or_user_ids,
    import_is_a_dry_run_until_applied,
    import_users_json_and_onboarding_files,
    wrong_keyring_and_bad_input_fail_clearly,
);

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
    url: String,
    secrets: Mutex<Vec<String>>,
}

impl Env {
    async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = match backend {
            Backend::Sqlite => {
                format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display())
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let db = common::TestDb::new(backend).await;
                let name = db.pg_options().get_database().unwrap().to_owned();
                let server = common::pg_server_url();
                let (base, _) = server.split_once('?').unwrap_or((&server, ""));
                let (host, _) = base.rsplit_once('/').unwrap();
                assert!(host.contains("://"), "unexpected server URL shape");
                format!("{host}/{name}")
            }
        };
        Self {
            backend,
            dir,
            url,
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
            .env_remove("BYOK_MASTER_KEYS")
            .env_remove("RUST_LOG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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
                Vault::open(PostgresStore::connect(&self.url).await?, keyring).await
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
                let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
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

// ----- master keys, no database -----

#[test]
fn keygen_writes_an_owner_only_file_and_never_prints_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keygen = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_remove("BYOK_MASTER_KEYS")
            .env_remove("BYOK_DATABASE_URL")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Out {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    };

    let out = keygen(&["keygen", "--id", "main-1", "--out", "master.keys"]).ok();
    let path = dir.path().join("master.keys");
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    let keyring = Keyring::from_file(&path).unwrap();
    assert_eq!(keyring.ids().collect::<Vec<_>>(), ["main-1"]);
    let line = keyring.active().expose_keyring_line();
    let (_, b64) = line.split_once(':').unwrap();
    assert!(text.contains(b64));
    for printed in [&out.stdout, &out.stderr] {
        assert!(!printed.contains(b64), "the key was printed: {out:#?}");
    }
    out.says("master.keys").says("mode 0600");

    // Never overwritten.
    let again = keygen(&["keygen", "--out", "master.keys"]).fails(1, "already exists");
    assert!(!again.stderr.contains(b64) && !again.stdout.contains(b64));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // `--out -` is the explicit way to see the key: the keyring line, alone, on stdout.
    let shown = keygen(&["keygen", "--id", "k9", "--out", "-"]).ok();
    let printed = Keyring::parse(&shown.stdout).unwrap();
    assert_eq!(printed.ids().collect::<Vec<_>>(), ["k9"]);
    assert_eq!(shown.stdout.lines().count(), 1);
    assert!(!dir.path().join("-").exists());

    // A destination is required; a bad id is refused.
    keygen(&["keygen"]).fails(2, "--out");
    keygen(&["keygen", "--id", "bad id", "--out", "x.keys"]).fails(1, "key id");
    assert!(!dir.path().join("x.keys").exists());
}

// ----- users' keys -----

async fn put_list_delete_never_show_the_secret(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let alice = "alice@example.com";
    let secret = "sk-proj-alice-0123456789abcdef-0001";

    let put = env.put("k1.keys", alice, "OpenAI", secret);
    put.says("stored openai for the user (masked ")
        .says("fingerprint ");
    assert!(!put.stdout.contains(alice), "{put:#?}");

    // Exactly the piped text, less its one trailing newline.
    let vault = env.vault("k1.keys").await.unwrap();
    let stored = vault.get(alice, "openai").await.unwrap().unwrap();
    assert_eq!(stored.expose_secret(), secret);
    let masked = vault.list(alice).await.unwrap()[0].masked.clone();
    let fingerprint = vault.fingerprint(secret);
    put.says(&masked).says(&fingerprint);

    // Windows line ending, and a second provider.
    let exa = env.secret("exa-alice-9876543210-zyxw");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "put",
            "--user",
            alice,
            "--provider",
            "exa",
        ],
        Some(&format!("{exa}\r\n")),
    )
    .ok();
    assert_eq!(
        vault
            .get(alice, "exa")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        exa
    );

    let list = env
        .run(
            &["--keyring-file", "k1.keys", "list", "--user", alice],
            None,
        )
        .ok();
    list.says("provider")
        .says("masked")
        .says("fingerprint")
        .says(&masked)
        .says("never");
    assert_eq!(list.stdout.lines().count(), 3, "{list:#?}");
    assert!(list.stdout.lines().nth(1).unwrap().starts_with("exa "));

    // Replacing says so.
    env.put(
        "k1.keys",
        alice,
        "openai",
        "sk-proj-alice-0123456789abcdef-0002",
    )
    .says("replaced openai for the user");

    // An empty standard input is refused, and nothing changes.
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "put",
            "--user",
            alice,
            "--provider",
            "gemini",
        ],
        Some(""),
    )
    .fails(1, "no secret on standard input");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "put",
            "--user",
            alice,
            "--provider",
            "gemini",
        ],
        None,
    )
    .fails(1, "no secret");
    assert!(vault.get(alice, "gemini").await.unwrap().is_none());

    // Delete one, then all; other users are untouched.
    env.put("k1.keys", "bob", "openai", "sk-proj-bob-0123456789abcdef");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "delete",
            "--user",
            alice,
            "--provider",
            "openai",
        ],
        None,
    )
    .ok()
    .says("deleted openai");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "delete",
            "--user",
            alice,
            "--provider",
            "openai",
        ],
        None,
    )
    .ok()
    .says("nothing deleted");
    env.run(
        &["--keyring-file", "k1.keys", "delete", "--user", alice],
        None,
    )
    .fails(2, "--provider");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "delete",
            "--user",
            alice,
            "--provider",
            "exa",
            "--all",
        ],
        None,
    )
    .fails(2, "cannot be used with");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "delete",
            "--user",
            alice,
            "--all",
        ],
        None,
    )
    .ok()
    .says("deleted 1 key of the user");
    env.run(
        &["--keyring-file", "k1.keys", "list", "--user", alice],
        None,
    )
    .ok()
    .says("no keys stored for this user");
    assert_eq!(vault.list("bob").await.unwrap().len(), 1);
}

async fn a_secret_given_as_an_argument_is_refused_and_not_echoed(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let secret = env.secret("sk-proj-typed-on-the-command-line-42");
    let secret = secret.as_str();
    let base = [
        "--keyring-file",
        "k1.keys",
        "put",
        "--user",
        "alice",
        "--provider",
        "openai",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        // Standard input holds another secret: it must not be read either.
        env.run(&args, Some("sk-from-stdin-never-used-000000"))
    };
    with(&[secret]).fails(2, "unexpected argument");
    with(&["--", secret]).fails(2, "unexpected argument");
    with(&["--secret", secret]).fails(2, "unexpected argument");
    with(&[&format!("--secret={secret}")]).fails(2, "unexpected argument");
    with(&["--expires-in", secret]).fails(2, "invalid value for '--expires-in");
    env.run(&["--keyring-file", "k1.keys", secret], None)
        .fails(2, "unrecognized subcommand");
    // Nothing was stored (the vault is opened only after the command line parses).
    let vault = env.vault("k1.keys").await.unwrap();
    assert!(vault.list("alice").await.unwrap().is_empty());
}

// ----- rotation -----

async fn rotate_rewrap_verify_retire(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let keys = [
        ("alice", "openai", "sk-proj-alice-rotate-0123456789"),
        ("alice", "exa", "exa-alice-rotate-0123456789"),
        ("bob", "openai", "sk-proj-bob-rotate-0123456789"),
    ];
    for (user, provider, secret) in keys {
        env.put("k1.keys", user, provider, secret);
    }

    // The new keyring: k2 first, k1 after it; owner-only; never overwrites.
    let rotate = env
        .run(
            &[
                "--keyring-file",
                "k1.keys",
                "rotate",
                "--id",
                "k2",
                "--out",
                "k2.keys",
            ],
            None,
        )
        .ok();
    env.remember_keys("k2.keys");
    env.check(&rotate);
    rotate
        .says("k2.keys")
        .says("rewrap")
        .says("verify")
        .says("retire --key-id k1");
    assert_eq!(mode(&env.path("k2.keys")), 0o600);
    let ring = Keyring::from_file(env.path("k2.keys")).unwrap();
    assert_eq!(ring.ids().collect::<Vec<_>>(), ["k2", "k1"]);
    let k1 = Keyring::from_file(env.path("k1.keys")).unwrap();
    assert_eq!(
        *ring.get("k1").unwrap().expose_keyring_line(),
        *k1.active().expose_keyring_line()
    );
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "rotate",
            "--id",
            "k1",
            "--out",
            "other.keys",
        ],
        None,
    )
    .fails(1, "already holds a key `k1`");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "rotate",
            "--id",
            "k3",
            "--out",
            "k2.keys",
        ],
        None,
    )
    .fails(1, "already exists");

    // Before the rewrap: everything under k1, and k1 cannot be retired.
    env.run(&["--keyring-file", "k2.keys", "usage"], None)
        .ok()
        .says("k1          3     in keyring")
        .says("k2          0     active");
    env.run(
        &["--keyring-file", "k2.keys", "retire", "--key-id", "k1"],
        None,
    )
    .fails(1, "still sealed under `k1`");
    env.run(
        &["--keyring-file", "k2.keys", "retire", "--key-id", "k2"],
        None,
    )
    .fails(1, "active key cannot be retired");

    // The rewrap re-seals all three, then verifies; no progress bar without a terminal.
    let rewrap = env
        .run(
            &["--keyring-file", "k2.keys", "rewrap", "--batch", "2"],
            None,
        )
        .ok();
    rewrap
        .says("3 keys re-sealed under `k2`")
        .says("verify: 3 keys open, 0 failed; 3 under `k2`")
        .says("`k1` can be retired");
    assert_eq!(rewrap.stderr, "", "{rewrap:#?}");
    // Run again, it has nothing left to do.
    env.run(&["--keyring-file", "k2.keys", "rewrap"], None)
        .ok()
        .says("0 keys re-sealed");
    env.run(&["--keyring-file", "k2.keys", "verify"], None)
        .ok()
        .says("3 keys open, 0 failed");

    // Retire k1, writing the keyring without it.
    env.run(
        &[
            "--keyring-file",
            "k2.keys",
            "retire",
            "--key-id",
            "k1",
            "--out",
            "k3.keys",
        ],
        None,
    )
    .ok()
    .says("retired `k1`")
    .says("k3.keys");
    assert_eq!(mode(&env.path("k3.keys")), 0o600);
    let ring = Keyring::from_file(env.path("k3.keys")).unwrap();
    assert_eq!(ring.ids().collect::<Vec<_>>(), ["k2"]);

    // With only k2, everything opens; the old keyring alone no longer can.
    env.run(&["--keyring-file", "k3.keys", "verify"], None)
        .ok()
        .says("3 keys open, 0 failed; 3 under `k2`");
    env.run(
        &["--keyring-file", "k3.keys", "list", "--user", "alice"],
        None,
    )
    .ok()
    .says(" k2 ");
    let vault = env.vault("k3.keys").await.unwrap();
    for (user, provider, secret) in keys {
        let key = vault.get(user, provider).await.unwrap().unwrap();
        assert_eq!(key.expose_secret(), secret);
    }
    env.run(&["--keyring-file", "k1.keys", "verify"], None)
        .fails(1, "cannot read this database");
}

async fn rewrap_and_verify_fail_on_a_key_that_does_not_open(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    env.put(
        "k1.keys",
        "alice",
        "openai",
        "sk-proj-alice-tamper-0123456789",
    );
    env.put("k1.keys", "bob", "openai", "sk-proj-bob-tamper-0123456789");
    env.tamper("bob", "openai").await;

    let verify = env
        .run(&["--keyring-file", "k1.keys", "verify"], None)
        .fails(1, "1 stored key did not open");
    verify
        .says("1 keys open, 1 failed")
        .says("does not open: provider openai, master key `k1`, user ref ");
    assert!(!verify.stdout.contains("bob"), "{verify:#?}");

    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "rotate",
            "--id",
            "k2",
            "--out",
            "k2.keys",
        ],
        None,
    )
    .ok();
    env.remember_keys("k2.keys");
    env.run(&["--keyring-file", "k2.keys", "rewrap"], None)
        .fails(1, "did not open")
        .says("1 key re-sealed under `k2`")
        .says("1 failed");
}

// ----- expiry -----

async fn expiring_and_purging(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let ring = ["--keyring-file", "k1.keys"];
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut all = ring.to_vec();
        all.extend_from_slice(args);
        env.run(&all, stdin)
    };
    let trial = env.secret("sk-proj-trial-0123456789abcdef");
    run(
        &[
            "put",
            "--user",
            "alice",
            "--provider",
            "openai",
            "--expires-in",
            "2h",
        ],
        Some(&trial),
    )
    .ok()
    .says(", expires 20");
    env.put("k1.keys", "alice", "exa", "exa-alice-expiry-0123456789");

    let list = run(&["list", "--user", "alice"], None).ok();
    let openai_line = list
        .stdout
        .lines()
        .find(|l| l.starts_with("openai"))
        .unwrap();
    assert!(openai_line.trim_end().ends_with('Z'), "{list:#?}");

    // Expire openai at once: still listed, marked, not served, then purged.
    run(
        &[
            "expire",
            "--user",
            "alice",
            "--provider",
            "openai",
            "--in",
            "0s",
        ],
        None,
    )
    .ok()
    .says("has expired");
    run(&["list", "--user", "alice"], None)
        .ok()
        .says("(expired)");
    let vault = env.vault("k1.keys").await.unwrap();
    assert!(vault.get("alice", "openai").await.unwrap().is_none());

    // exa: an expiry, then cleared again.
    run(
        &[
            "expire",
            "--user",
            "alice",
            "--provider",
            "exa",
            "--in",
            "1d",
        ],
        None,
    )
    .ok()
    .says("now expires at ")
    .says("(in 1d)");
    run(
        &["expire", "--user", "alice", "--provider", "exa", "--never"],
        None,
    )
    .ok()
    .says("never expires");

    run(&["purge-expired"], None)
        .ok()
        .says("purged 1 expired key");
    run(&["purge-expired"], None)
        .ok()
        .says("purged 0 expired keys");
    let left: Vec<String> = vault
        .list("alice")
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.provider)
        .collect();
    assert_eq!(left, ["exa"]);

    // A key that is not there, and command lines that do not parse.
    run(
        &[
            "expire",
            "--user",
            "alice",
            "--provider",
            "openai",
            "--never",
        ],
        None,
    )
    .fails(1, "no openai key");
    run(&["expire", "--user", "alice", "--provider", "exa"], None).fails(2, "required");
    run(
        &[
            "expire",
            "--user",
            "alice",
            "--provider",
            "exa",
            "--in",
            "1h",
            "--never",
        ],
        None,
    )
    .fails(2, "cannot be used with");
    run(
        &[
            "expire",
            "--user",
            "alice",
            "--provider",
            "exa",
            "--in",
            "soon",
        ],
        None,
    )
    .fails(2, "expected a number and a unit");
}

// ----- audit -----

async fn audit_shows_what_happened_without_secrets_or_user_ids(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let (alice, bob) = (
        env.secret("alice.audit@example.com"),
        env.secret("bob.audit@example.com"),
    );
    let (alice, bob) = (alice.as_str(), bob.as_str());
    env.put("k1.keys", alice, "openai", "sk-proj-alice-audit-0000000001");
    env.put("k1.keys", alice, "openai", "sk-proj-alice-audit-0000000002");
    env.put("k1.keys", bob, "exa", "exa-bob-audit-0123456789");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "--actor",
            "admin:ops",
            "delete",
            "--user",
            bob,
            "--provider",
            "exa",
        ],
        None,
    )
    .ok();
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "expire",
            "--user",
            alice,
            "--provider",
            "openai",
            "--in",
            "1h",
        ],
        None,
    )
    .ok();

    let all = env.run(&["--keyring-file", "k1.keys", "audit"], None).ok();
    all.says("time").says("user ref");
    let lines: Vec<&str> = all.stdout.lines().skip(1).collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        actions,
        ["put", "replace", "put", "delete", "expiry"],
        "{all:#?}"
    );
    assert!(lines[3].contains("admin:ops") && lines[0].contains(" cli "));
    assert!(lines[0].starts_with("20") && lines[0].contains('T'));

    let vault = env.vault("k1.keys").await.unwrap();
    let alice_ref = vault.user_ref(alice);
    let mine = env
        .run(
            &["--keyring-file", "k1.keys", "audit", "--user", alice],
            None,
        )
        .ok();
    let mine_lines: Vec<&str> = mine.stdout.lines().skip(1).collect();
    assert_eq!(mine_lines.len(), 3, "{mine:#?}");
    assert!(mine_lines.iter().all(|l| l.ends_with(alice_ref.as_str())));

    // Time windows: RFC 3339, dates and Unix seconds.
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "audit",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
        None,
    )
    .ok()
    .says("no audit records");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "audit",
            "--until",
            "1000000000",
        ],
        None,
    )
    .ok()
    .says("no audit records");
    let window = env
        .run(
            &[
                "--keyring-file",
                "k1.keys",
                "audit",
                "--user",
                alice,
                "--since",
                "2000-01-01",
                "--until",
                "2999-01-01T00:00:00+02:00",
            ],
            None,
        )
        .ok();
    assert_eq!(window.stdout.lines().count(), 4, "{window:#?}");
    env.run(
        &["--keyring-file", "k1.keys", "audit", "--since", "yesterday"],
        None,
    )
    .fails(2, "expected RFC 3339");
}

// ----- import -----

async fn import_is_a_dry_run_until_applied(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let openai = env.secret("sk-proj-dev-import-0123456789");
    let exa = env.secret("exa-dev-import-0123456789");
    std::fs::write(
        env.path(".env"),
        format!("DEBUG=true\nexport OPENAI_API_KEY=\"{openai}\"\nEXA_API_KEY={exa} # mine\n"),
    )
    .unwrap();
    let ring = ["--keyring-file", "k1.keys"];
    let import = |extra: &[&str]| {
        let mut args = ring.to_vec();
        args.extend_from_slice(&["import", "env", "--user", "alice", ".env"]);
        args.extend_from_slice(extra);
        env.run(&args, None)
    };

    import(&[])
        .ok()
        .says("dry run")
        .says("line 2 (OPENAI_API_KEY)")
        .says("2 new")
        .says("--apply");
    let vault = env.vault("k1.keys").await.unwrap();
    assert!(
        vault.list("alice").await.unwrap().is_empty(),
        "a dry run wrote"
    );

    import(&["--replace-different"]).fails(2, "--apply");
    import(&["--apply"]).ok().says("2 added");
    assert_eq!(
        vault
            .get("alice", "exa")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        exa
    );
    assert_eq!(
        vault
            .get("alice", "openai")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        openai
    );
    import(&["--apply"]).ok().says("2 unchanged");

    // A different key in the file is a conflict unless replacing is asked for.
    let newer = env.secret("sk-proj-dev-import-newer-987654");
    std::fs::write(
        env.path(".env"),
        format!("OPENAI_API_KEY={newer}\nEXA_API_KEY={exa}\n"),
    )
    .unwrap();
    import(&[])
        .ok()
        .says("1 different")
        .says("--replace-different");
    import(&["--apply"]).ok().says("1 conflicts");
    import(&["--apply", "--remove-source"]).fails(1, "not removing the source file");
    import(&["--apply", "--replace-different", "--remove-source"])
        .ok()
        .says("1 replaced")
        .says("source removed");
    assert!(!env.path(".env").exists());
    assert_eq!(
        vault
            .get("alice", "openai")
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        newer
    );
    let audit = env.run(&["--keyring-file", "k1.keys", "audit"], None).ok();
    audit.says(" import ");

    // A file that is not there.
    import(&[]).fails(1, "legacy import error");
}

async fn import_users_json_and_onboarding_files(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    let a = env.secret("sk-proj-users-json-alice-01234");
    let b = env.secret("AIza-users-json-bob-0123456789");
    std::fs::write(
        env.path("users.json"),
        format!(
            r#"{{"users": {{"alice": {{"password": "x", "api_keys": {{"openai": "{a}"}}}},
                "bob": {{"api_keys": {{"GEMINI_API_KEY": "{b}"}}}}}}}}"#
        ),
    )
    .unwrap();
    let c = env.secret("exa-onboarding-carol-0123456789");
    std::fs::write(
        env.path("progress.json"),
        format!(r#"{{"steps": [{{"step_number": 1, "data": {{"api_keys": {{"exa": "{c}"}}}}}}]}}"#),
    )
    .unwrap();
    let ring = ["--keyring-file", "k1.keys"];
    let run = |extra: &[&str]| {
        let mut args = ring.to_vec();
        args.extend_from_slice(extra);
        env.run(&args, None)
    };

    run(&["import", "users-json", "users.json"])
        .ok()
        .says("2 new");
    run(&["import", "users-json", "users.json", "--apply"])
        .ok()
        .says("2 added");
    run(&["import", "onboarding", "progress.json"]).fails(2, "--user");
    run(&[
        "import",
        "onboarding",
        "--user",
        "carol",
        "progress.json",
        "--apply",
    ])
    .ok()
    .says("1 added");

    let vault = env.vault("k1.keys").await.unwrap();
    for (user, provider, secret) in [
        ("alice", "openai", &a),
        ("bob", "gemini", &b),
        ("carol", "exa", &c),
    ] {
        let key = vault.get(user, provider).await.unwrap().unwrap();
        assert_eq!(key.expose_secret(), secret.as_str());
    }
    assert!(env.path("users.json").exists() && env.path("progress.json").exists());
}

// ----- errors -----

async fn wrong_keyring_and_bad_input_fail_clearly(backend: Backend) {
    let env = Env::new(backend).await;
    env.keygen("k1", "k1.keys");
    env.keygen("k1", "other.keys");
    env.put(
        "k1.keys",
        "alice",
        "openai",
        "sk-proj-alice-errors-0123456789",
    );

    // A keyring that did not seal this database.
    env.run(
        &["--keyring-file", "other.keys", "list", "--user", "alice"],
        None,
    )
    .fails(1, "the master keyring cannot read this database");
    // No keyring, an unreadable one, and a malformed one (not echoed).
    env.run(&["list", "--user", "alice"], None)
        .fails(1, "no master keyring");
    env.run(
        &["--keyring-file", "missing.keys", "list", "--user", "alice"],
        None,
    )
    .fails(1, "could not be read");
    let junk = env.secret("k1:bm90LWEtcmVhbC1rZXktYnV0LXNlY3JldC10ZXh0");
    std::fs::write(env.path("junk.keys"), format!("{junk}\n")).unwrap();
    env.run(
        &["--keyring-file", "junk.keys", "list", "--user", "alice"],
        None,
    )
    .fails(1, "invalid master keyring");
    let junk_env = env.secret("k1:c2VjcmV0LWZyb20tdGhlLWVudmlyb25tZW50");
    env.run_with_env(
        &["list", "--user", "alice"],
        None,
        &[("BYOK_MASTER_KEYS", &junk_env)],
    )
    .fails(1, "BYOK_MASTER_KEYS");

    // The keyring from the environment works like the file.
    let text = std::fs::read_to_string(env.path("k1.keys")).unwrap();
    env.run_with_env(
        &["list", "--user", "alice"],
        None,
        &[("BYOK_MASTER_KEYS", &text)],
    )
    .ok()
    .says("openai");

    // Database URLs: none, unsupported, unreachable; a password is never shown.
    env.run_with_env(
        &["--keyring-file", "k1.keys", "usage"],
        None,
        &[("BYOK_DATABASE_URL", "")],
    )
    .fails(1, "no database");
    let password = env.secret("hunter2-db-password");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "--database",
            &format!("mysql://admin:{password}@127.0.0.1/keys"),
            "usage",
        ],
        None,
    )
    .fails(1, "unsupported database URL");
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "--database",
            "sqlite:/nonexistent-dir/keys.db",
            "usage",
        ],
        None,
    )
    .fails(1, "could not open the database");
    // A port nobody listens on (the first of the range `.ci/test` never uses).
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "--database",
            &format!("postgres://admin:{password}@127.0.0.1:9/keys"),
            "usage",
        ],
        None,
    )
    .fails(1, "could not open the database");
    // Bad values reach the library's checks, whose messages name no value.
    env.run(
        &[
            "--keyring-file",
            "k1.keys",
            "--actor",
            "not an actor",
            "usage",
        ],
        None,
    )
    .fails(1, "invalid audit actor");
    let put = |provider: &str| {
        env.run(
            &[
                "--keyring-file",
                "k1.keys",
                "put",
                "--user",
                "alice",
                "--provider",
                provider,
            ],
            Some("sk-proj-never-stored-0123456789"),
        )
    };
    env.secret("sk-proj-never-stored-0123456789");
    put("not a provider").fails(1, "invalid provider name");
    // The `help` output is not an error.
    env.run(&["--help"], None).ok().says("Usage: tower-byok");
    env.run(&["put", "--help"], None)
        .ok()
        .says("never an argument");
}
