//! Keys from a `.env` text: [`env_file::parse`] and [`Vault::put_env_keys`] on real
//! databases, and each rule of the grammar the `env_file` module documents.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::{keyring, Backend, Opts, TestDb};
use tower_byok::check;
use tower_byok::env_file::{self, EnvKeys, EnvMapping};
use tower_byok::store::{AuditStore, KeyStore, StoredKey};
use tower_byok::{AuditAction, AuditRecord, ErrorKind, SqliteStore, Vault};

per_backend!(
    parsed_keys_are_stored_with_an_expiry_and_then_expire,
    a_key_failing_a_check_or_the_cap_stops_the_call_before_any_write,
);

const OPENAI: &str = "sk-proj-upload-0123456789abcdef";
const EXA: &str = "exa-upload-0123456789abcdef";

fn parse(text: &str) -> EnvKeys {
    env_file::parse(text, &EnvMapping::new()).unwrap()
}

/// `(provider, secret)` of each key, in order.
fn pairs(keys: &EnvKeys) -> Vec<(String, String)> {
    keys.iter()
        .map(|k| (k.provider().to_owned(), k.expose_secret().to_owned()))
        .collect()
}

/// The one value `text` assigns to `OPENAI_API_KEY`.
fn value(text: &str) -> String {
    let keys = parse(text);
    assert_eq!(keys.len(), 1, "{text:?}");
    let value = keys.iter().next().unwrap().expose_secret().to_owned();
    value
}

/// The error `text` is refused with, checked to hold none of `secrets`.
fn refused(text: &str, mapping: &EnvMapping, secrets: &[&str]) -> tower_byok::Error {
    let err = env_file::parse(text, mapping).unwrap_err();
    for secret in secrets {
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(!format!("{err:?}").contains(secret), "{err:?}");
    }
    err
}

async fn stored(vault: &Vault, user: &str) -> Vec<(String, String)> {
    vault
        .get_all(user)
        .await
        .unwrap()
        .iter()
        .map(|k| (k.provider().to_owned(), k.expose_secret().to_owned()))
        .collect()
}

async fn parsed_keys_are_stored_with_an_expiry_and_then_expire(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db.open(keyring()).await.unwrap();
    vault
        .put("alice", "openai", "sk-proj-old-0123456789")
        .await
        .unwrap();
    vault
        .put("alice", "gemini", "AIza-kept-0123456789")
        .await
        .unwrap();
    vault.put("bob", "exa", "exa-bob-0123456789").await.unwrap();

    let keys = parse(&format!(
        "# uploaded\nDEBUG=true\nOPENAI_API_KEY={OPENAI}\nEXA_API_KEY=\"{EXA}\"\n"
    ));
    let until = SystemTime::now() + Duration::from_millis(800);
    assert_eq!(
        vault
            .put_env_keys("alice", &keys, Some(until))
            .await
            .unwrap(),
        2
    );

    // Stored in place of the earlier key, beside the one the text does not mention.
    assert_eq!(
        stored(&vault, "alice").await,
        [
            ("exa", EXA),
            ("gemini", "AIza-kept-0123456789"),
            ("openai", OPENAI)
        ]
        .map(|(p, s)| (p.to_owned(), s.to_owned()))
    );
    let listed = vault.list("alice").await.unwrap();
    let expiry = |p: &str| listed.iter().find(|k| k.provider == p).unwrap().expires_at;
    assert!(expiry("openai").is_some() && expiry("exa").is_some());
    assert_eq!(expiry("gemini"), None);
    let trail = vault.audit_trail("alice").await.unwrap();
    assert!(trail
        .iter()
        .any(|r| r.provider == "openai" && r.action == AuditAction::Replace));
    assert!(trail
        .iter()
        .any(|r| r.provider == "exa" && r.action == AuditAction::Put));
    assert_eq!(
        stored(&vault, "bob").await,
        [("exa".to_owned(), "exa-bob-0123456789".to_owned())]
    );

    // Past the expiry the uploaded keys are not served; the others are.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        stored(&vault, "alice").await,
        [("gemini".to_owned(), "AIza-kept-0123456789".to_owned())]
    );
    assert!(vault
        .keys_for("alice")
        .await
        .unwrap()
        .get("openai")
        .is_none());

    // Without an expiry they stay; nothing found, nothing written.
    assert_eq!(vault.put_env_keys("alice", &keys, None).await.unwrap(), 2);
    assert_eq!(stored(&vault, "alice").await.len(), 3);
    assert_eq!(
        vault
            .put_env_keys("alice", &parse("DEBUG=1\n"), None)
            .await
            .unwrap(),
        0
    );
    let err = vault.put_env_keys(" alice", &keys, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidUserId);
}

async fn a_key_failing_a_check_or_the_cap_stops_the_call_before_any_write(backend: Backend) {
    let db = TestDb::new(backend).await;
    let vault = db
        .open_checked(keyring(), |c| {
            c.check("openai", check::openai()).check(
                "exa",
                check::live(|key: String| async move {
                    if key.ends_with("-live") {
                        Ok(())
                    } else {
                        Err("the provider refused the key")
                    }
                }),
            )
        })
        .await;
    // The keys and the audit trail: a write taken back would still leave its records.
    let before = || async {
        let trail = vault.audit_trail("alice").await.unwrap().len();
        (stored(&vault, "alice").await, trail)
    };
    vault
        .put("alice", "gemini", "AIza-kept-0123456789")
        .await
        .unwrap();
    let start = before().await;

    // The first key is fine, the second fails its format check: nothing is written.
    let bad_format = "sk-short-secret";
    let keys = parse(&format!(
        "GEMINI_API_KEY=AIza-new-0123456789\nOPENAI_API_KEY={bad_format}\n"
    ));
    let err = vault.put_env_keys("alice", &keys, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSecret);
    assert!(err.to_string().contains("line 2 (OPENAI_API_KEY)"), "{err}");
    assert!(!err.to_string().contains(bad_format), "{err}");
    assert_eq!(before().await, start);

    // A live check refusing the last key: nothing is written either.
    let keys = parse(&format!(
        "OPENAI_API_KEY={OPENAI}\nEXA_API_KEY=exa-refused-0123456789\n"
    ));
    let err = vault.put_env_keys("alice", &keys, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRejected);
    assert!(err.to_string().contains("line 2 (EXA_API_KEY)"), "{err}");
    assert!(!err.to_string().contains("exa-refused"), "{err}");
    assert_eq!(before().await, start);

    // Past the cap on providers: nothing is written.
    let capped = TestDb::new(backend).await;
    let vault = capped
        .open_with(
            keyring(),
            Opts {
                max_providers: 2,
                ..Opts::default()
            },
        )
        .await
        .unwrap();
    vault
        .put("alice", "gemini", "AIza-kept-0123456789")
        .await
        .unwrap();
    let keys = parse(&format!(
        "OPENAI_API_KEY={OPENAI}\nEXA_API_KEY={EXA}-live\n"
    ));
    let err = vault.put_env_keys("alice", &keys, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooManyProviders);
    assert_eq!(stored(&vault, "alice").await.len(), 1);
    assert_eq!(vault.audit_trail("alice").await.unwrap().len(), 1);
    // Replacing a key the user has takes no room.
    let keys = parse(&format!(
        "GEMINI_API_KEY=AIza-new-0123456789\nOPENAI_API_KEY={OPENAI}\n"
    ));
    assert_eq!(vault.put_env_keys("alice", &keys, None).await.unwrap(), 2);
}

/// The database refuses the second key (a trigger): the first, already written, is
/// taken back to the user's earlier key, and the error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_failure_midway_takes_back_the_keys_written() {
    let db = TestDb::new(Backend::Sqlite).await;
    let vault = db.open(keyring()).await.unwrap();
    vault
        .put("alice", "openai", "sk-proj-old-0123456789")
        .await
        .unwrap();
    vault
        .put("alice", "gemini", "AIza-old-0123456789")
        .await
        .unwrap();
    let start = stored(&vault, "alice").await;
    db.exec(
        "CREATE TRIGGER refuse_exa BEFORE INSERT ON byok_keys WHEN NEW.provider = 'exa' \
         BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    .await;

    let keys = parse(&format!(
        "OPENAI_API_KEY={OPENAI}\nGROQ_API_KEY=gsk-new-0123456789\nEXA_API_KEY={EXA}\n"
    ));
    let err = vault.put_env_keys("alice", &keys, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    let message = err.to_string();
    assert!(message.contains("key 3 of 3"), "{message}");
    // The refused key never landed, and had no row before: counted in none of these.
    assert!(
        message.contains(
            "2 restored, 0 left because another write replaced them, 0 could not be restored"
        ),
        "{message}"
    );
    assert!(!message.contains("store the keys again"), "{message}");
    assert!(
        !message.contains(OPENAI) && !message.contains(EXA),
        "{message}"
    );
    assert_eq!(stored(&vault, "alice").await, start);
    let trail = vault.audit_trail("alice").await.unwrap();
    assert!(trail
        .iter()
        .any(|r| r.provider == "groq" && r.action == AuditAction::Delete));
    assert!(!trail.iter().any(|r| r.provider == "exa"));
    let reopened = db.open(keyring()).await.unwrap();
    assert_eq!(stored(&reopened, "alice").await, start);
}

/// A real SQLite store with faults: the write of `lose_reply` lands but reports a lost
/// connection (as when the link drops during the commit), after first deleting
/// `delete_first` (another write, landing meanwhile); deleting `refuse_delete` fails
/// without touching the database.
struct Faulty {
    inner: SqliteStore,
    lose_reply: &'static str,
    delete_first: Option<&'static str>,
    refuse_delete: Option<&'static str>,
}

impl KeyStore for Faulty {
    async fn migrate(&self) -> tower_byok::Result<()> {
        self.inner.migrate().await
    }
    async fn fetch_user(&self, user_id: &str) -> tower_byok::Result<Vec<StoredKey>> {
        self.inner.fetch_user(user_id).await
    }
    async fn fetch_key(
        &self,
        user_id: &str,
        provider: &str,
    ) -> tower_byok::Result<Option<StoredKey>> {
        self.inner.fetch_key(user_id, provider).await
    }
    async fn upsert(
        &self,
        row: &StoredKey,
        audit: &AuditRecord,
        max_providers: u32,
    ) -> tower_byok::Result<AuditAction> {
        let action = self.inner.upsert(row, audit, max_providers).await?;
        if row.provider != self.lose_reply {
            return Ok(action);
        }
        if let Some(other) = self.delete_first {
            self.inner.delete(&row.user_id, Some(other), audit).await?;
        }
        Err(tower_byok::Error::store(
            "connection lost during the commit",
        ))
    }
    async fn delete(
        &self,
        user_id: &str,
        provider: Option<&str>,
        audit: &AuditRecord,
    ) -> tower_byok::Result<Vec<String>> {
        if provider.is_some() && provider == self.refuse_delete {
            return Err(tower_byok::Error::store("connection refused"));
        }
        self.inner.delete(user_id, provider, audit).await
    }
    async fn check_records(&self) -> tower_byok::Result<Vec<(String, Vec<u8>)>> {
        self.inner.check_records().await
    }
    async fn add_check_records(
        &self,
        records: &[(&str, Vec<u8>)],
        at: i64,
        only_if_none: bool,
    ) -> tower_byok::Result<usize> {
        self.inner
            .add_check_records(records, at, only_if_none)
            .await
    }
    async fn key_usage(&self) -> tower_byok::Result<Vec<(String, i64)>> {
        self.inner.key_usage().await
    }
    fn audit(&self) -> Option<&impl AuditStore> {
        self.inner.audit()
    }
}

/// Alice's keys before each faulty upload: openai and gemini.
async fn faulty_vault(db: &TestDb, faults: Faulty) -> (Vault, Vec<(String, String)>) {
    let plain = db.open(keyring()).await.unwrap();
    plain
        .put("alice", "openai", "sk-proj-old-0123456789")
        .await
        .unwrap();
    plain
        .put("alice", "gemini", "AIza-old-0123456789")
        .await
        .unwrap();
    let start = stored(&plain, "alice").await;
    (Vault::open(faults, keyring()).await.unwrap(), start)
}

async fn sqlite(db: &TestDb) -> SqliteStore {
    SqliteStore::open(db.sqlite_path()).await.unwrap()
}

/// The last write lands but its reply is lost: it is taken back with the others, so
/// nothing of the upload stays, as the error says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_landed_before_its_error_is_taken_back_too() {
    let db = TestDb::new(Backend::Sqlite).await;
    let faults = Faulty {
        inner: sqlite(&db).await,
        lose_reply: "exa",
        delete_first: None,
        refuse_delete: None,
    };
    let (vault, start) = faulty_vault(&db, faults).await;
    let keys = parse(&format!(
        "OPENAI_API_KEY={OPENAI}\nGROQ_API_KEY=gsk-new-0123456789\nEXA_API_KEY={EXA}\n"
    ));
    let err = vault.put_env_keys("alice", &keys, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Store);
    let message = err.to_string();
    assert!(message.contains("key 3 of 3"), "{message}");
    assert!(message.contains("3 restored, 0 left"), "{message}");
    assert!(!message.contains(OPENAI) && !message.contains(EXA));
    assert_eq!(stored(&vault, "alice").await, start);
}

/// Each key taken back is counted as what happened to it: restored, left because
/// another write replaced it, or not restored; the error holds the numbers, never a
/// value or the user id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_take_back_error_counts_what_was_restored_left_and_lost() {
    let db = TestDb::new(Backend::Sqlite).await;
    let faults = Faulty {
        inner: sqlite(&db).await,
        lose_reply: "exa",
        // Another write deletes the openai key the upload replaced: it stays deleted.
        delete_first: Some("openai"),
        // The new groq key cannot be deleted: it stays written.
        refuse_delete: Some("groq"),
    };
    let (vault, _) = faulty_vault(&db, faults).await;
    let keys = parse(&format!(
        "OPENAI_API_KEY={OPENAI}\nGROQ_API_KEY=gsk-new-0123456789\nEXA_API_KEY={EXA}\n"
    ));
    let err = vault.put_env_keys("alice", &keys, None).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(
            "1 restored, 1 left because another write replaced them, 1 could not be restored; \
             store the keys again"
        ),
        "{message}"
    );
    for secret in [OPENAI, EXA, "gsk-new-0123456789", "alice"] {
        assert!(!message.contains(secret), "{message}");
        assert!(!format!("{err:?}").contains(secret), "{err:?}");
    }
    assert_eq!(
        stored(&vault, "alice").await,
        [
            ("gemini".to_owned(), "AIza-old-0123456789".to_owned()),
            ("groq".to_owned(), "gsk-new-0123456789".to_owned()),
        ]
    );
}

#[test]
fn debug_and_errors_show_no_secret() {
    let keys = parse(&format!(
        "OPENAI_API_KEY={OPENAI}\nEXA_API_KEY={EXA}\nHOME=/root\n"
    ));
    let debug = format!("{keys:?}");
    assert_eq!(
        debug,
        r#"EnvKeys { keys: {"openai": "sk-…def", "exa": "exa…def"}, .. }"#
    );
    assert!(!debug.contains("upload"), "{debug}");

    let vars = EnvMapping::new();
    let long = "x".repeat(tower_byok::MAX_SECRET_LEN + 1);
    let err = refused(
        &format!("A=1\nOPENAI_API_KEY={long}\n"),
        &vars,
        &[&long[..64]],
    );
    assert_eq!(err.kind(), ErrorKind::InvalidSecret);
    assert!(err.to_string().contains("line 2 (OPENAI_API_KEY)"), "{err}");

    let fernet = format!("gAAAAAB{}", "s3cr3t".repeat(20));
    let err = refused(&format!("EXA_API_KEY={fernet}"), &vars, &[&fernet[..40]]);
    assert_eq!(err.kind(), ErrorKind::InvalidSecret);
    assert!(err.to_string().contains("line 1 (EXA_API_KEY)"), "{err}");
}

#[test]
fn malformed_lines_are_refused_by_number_without_their_text() {
    let vars = EnvMapping::new();
    for (line, what) in [
        ("sk-proj-secret-0123456789", "expected NAME=value"),
        (
            "OPENAI API KEY=sk-proj-secret-0123456789",
            "expected NAME=value",
        ),
        ("9OPENAI=sk-proj-secret-0123456789", "expected NAME=value"),
        ("=sk-proj-secret-0123456789", "expected NAME=value"),
        (
            "OPENAI_API_KEY=\"sk-proj-secret-0123456789",
            "unterminated quoted value",
        ),
        (
            "OPENAI_API_KEY='sk-proj-secret-0123456789",
            "unterminated quoted value",
        ),
        (
            "OPENAI_API_KEY=\"sk-proj-secret\" 0123456789",
            "unexpected text after the closing quote",
        ),
    ] {
        let text = format!("# keys\nDEBUG=1\n{line}\nEXA_API_KEY={EXA}\n");
        let err = refused(&text, &vars, &["secret", "0123456789"]);
        assert_eq!(err.kind(), ErrorKind::InvalidEnvFile, "{line}");
        assert_eq!(
            err.to_string(),
            format!("malformed .env text: line 3: {what}"),
            "{line}"
        );
    }
}

#[test]
fn two_keys_for_one_provider_must_agree() {
    let vars = EnvMapping::new();
    let text =
        "GEMINI_API_KEY=AIza-first-0123456789\nDEBUG=1\nGOOGLE_API_KEY=AIza-second-0123456789\n";
    let err = refused(text, &vars, &["first", "second"]);
    assert_eq!(err.kind(), ErrorKind::InvalidEnvFile);
    let message = err.to_string();
    assert!(message.contains("ambiguous input"), "{message}");
    assert!(message.contains("line 1 (GEMINI_API_KEY)"), "{message}");
    assert!(message.contains("line 3 (GOOGLE_API_KEY)"), "{message}");
    // One variable twice, too.
    let err = refused(
        "OPENAI_API_KEY=sk-a-0123456789\nOPENAI_API_KEY=sk-b-0123456789",
        &vars,
        &["sk-a", "sk-b"],
    );
    assert_eq!(err.kind(), ErrorKind::InvalidEnvFile);

    // The same key twice is one key; the later variable is skipped.
    let keys = parse("GEMINI_API_KEY=AIza-same-0123456789\nGOOGLE_API_KEY=AIza-same-0123456789\n");
    assert_eq!(
        pairs(&keys),
        [("gemini".to_owned(), "AIza-same-0123456789".to_owned())]
    );
    assert_eq!(keys.skipped().collect::<Vec<_>>(), ["GOOGLE_API_KEY"]);
    // Ignoring one variable resolves the ambiguity.
    let keys = env_file::parse(text, &EnvMapping::new().ignore("GOOGLE_API_KEY")).unwrap();
    assert_eq!(
        pairs(&keys),
        [("gemini".to_owned(), "AIza-first-0123456789".to_owned())]
    );
}

// --- The grammar of the module docs, one test per rule ------------------------------

#[test]
fn grammar_lines_end_at_newline_with_cr_and_bom_ignored() {
    let keys = parse("\u{feff}OPENAI_API_KEY=sk-a-0123456789\r\nEXA_API_KEY=exa-b\r\n");
    assert_eq!(
        pairs(&keys),
        [("openai", "sk-a-0123456789"), ("exa", "exa-b")]
            .map(|(p, s)| (p.to_owned(), s.to_owned()))
    );
}

#[test]
fn grammar_blank_and_comment_lines_are_skipped() {
    let keys =
        parse("\n   \n# OPENAI_API_KEY=sk-commented\n  \t# indented\nOPENAI_API_KEY=sk-real\n");
    assert_eq!(
        value("\n# OPENAI_API_KEY=sk-x\nOPENAI_API_KEY=sk-real"),
        "sk-real"
    );
    assert_eq!(keys.len(), 1);
    assert_eq!(keys.skipped().count(), 0);
}

#[test]
fn grammar_assignments_allow_export_and_blanks_and_check_names() {
    assert_eq!(value("export OPENAI_API_KEY=sk-a"), "sk-a");
    assert_eq!(value("export\tOPENAI_API_KEY = sk-a"), "sk-a");
    assert_eq!(value("  OPENAI_API_KEY\t=\tsk-a"), "sk-a");
    let keys = parse("_private.v2=1\nexportDEBUG=x\n");
    assert_eq!(
        keys.skipped().collect::<Vec<_>>(),
        ["_private.v2", "exportDEBUG"]
    );
    for bad in ["export", "export OPENAI-KEY=1", "1A=1", "A B=1", "A"] {
        assert!(env_file::parse(bad, &EnvMapping::new()).is_err(), "{bad:?}");
    }
}

#[test]
fn grammar_unquoted_values_trim_and_end_at_a_comment_after_a_blank() {
    assert_eq!(value("OPENAI_API_KEY=  sk-a  "), "sk-a");
    assert_eq!(value("OPENAI_API_KEY=sk-a # mine"), "sk-a");
    assert_eq!(value("OPENAI_API_KEY=sk-a\t#mine"), "sk-a");
    assert_eq!(value("OPENAI_API_KEY=sk-a#b"), "sk-a#b");
    assert_eq!(value(r"OPENAI_API_KEY=sk-a\nb\\"), r"sk-a\nb\\");
}

/// The blank after `=` counts: `NAME= #x` is an empty value and a comment, so a
/// placeholder left in a template is skipped, never stored over the user's real key;
/// `NAME=#x` (no blank) is the value `#x`. Both as python-dotenv reads them.
#[test]
fn grammar_a_comment_after_the_blank_after_the_equal_sign_leaves_the_value_empty() {
    for text in [
        "OPENAI_API_KEY= # paste yours",
        "OPENAI_API_KEY=\t#x",
        "OPENAI_API_KEY =  #x",
        "export OPENAI_API_KEY= #x",
    ] {
        let keys = parse(text);
        assert!(keys.is_empty(), "{text:?}");
        assert_eq!(
            keys.skipped().collect::<Vec<_>>(),
            ["OPENAI_API_KEY"],
            "{text:?}"
        );
    }
    assert_eq!(value("OPENAI_API_KEY=#x"), "#x");
    assert_eq!(value("OPENAI_API_KEY = #x\nOPENAI_API_KEY=#x"), "#x");
}

#[test]
fn grammar_single_quotes_are_literal() {
    assert_eq!(value(r"OPENAI_API_KEY='sk-a\n\' # x'"), r"sk-a\n\");
    assert_eq!(value("OPENAI_API_KEY=' sk-a # b '"), "sk-a # b");
    assert_eq!(value(r#"OPENAI_API_KEY='sk-"a"'"#), r#"sk-"a""#);
}

#[test]
fn grammar_double_quotes_resolve_six_escapes_and_keep_other_backslashes() {
    assert_eq!(
        value(r#"OPENAI_API_KEY="sk-\"a\\b\'c\nd\re\tf\zg""#),
        "sk-\"a\\b'c\nd\re\tf\\zg"
    );
    assert_eq!(value(r#"OPENAI_API_KEY="sk-a # b""#), "sk-a # b");
}

#[test]
fn grammar_only_blanks_or_a_comment_follow_a_closing_quote() {
    assert_eq!(value("OPENAI_API_KEY=\"sk-a\"   # mine"), "sk-a");
    assert_eq!(value("OPENAI_API_KEY='sk-a'\t"), "sk-a");
    for bad in ["OPENAI_API_KEY=\"sk-a\"b", "OPENAI_API_KEY='sk-a' b"] {
        let err = env_file::parse(bad, &EnvMapping::new()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("unexpected text after the closing quote"),
            "{err}"
        );
    }
}

#[test]
fn grammar_multi_line_values_are_refused() {
    for text in [
        "OPENAI_API_KEY=\"sk-first\nsecond\"\n",
        "OPENAI_API_KEY='sk-first\nsecond'\n",
    ] {
        let err = refused(text, &EnvMapping::new(), &["first", "second"]);
        assert_eq!(
            err.to_string(),
            "malformed .env text: line 1: unterminated quoted value"
        );
    }
    assert_eq!(
        value(r#"OPENAI_API_KEY="sk-first\nsecond""#),
        "sk-first\nsecond"
    );
}

#[test]
fn grammar_dollar_signs_are_never_expanded() {
    for text in [
        "OPENAI_API_KEY=sk-$BYOK_ENV_FILE_TEST_VAR-${BYOK_ENV_FILE_TEST_VAR}",
        "OPENAI_API_KEY=\"sk-$BYOK_ENV_FILE_TEST_VAR-${BYOK_ENV_FILE_TEST_VAR}\"",
        "OPENAI_API_KEY='sk-$BYOK_ENV_FILE_TEST_VAR-${BYOK_ENV_FILE_TEST_VAR}'",
    ] {
        assert_eq!(
            value(&format!("BYOK_ENV_FILE_TEST_VAR=x\n{text}")),
            "sk-$BYOK_ENV_FILE_TEST_VAR-${BYOK_ENV_FILE_TEST_VAR}"
        );
    }
}

#[test]
fn mapping_skips_unmapped_and_empty_variables_and_trims_values() {
    let keys = parse("DEBUG=true\nOPENAI_API_KEY=\nEXA_API_KEY=\"  \"\nGROQ_API_KEY=\" gsk-a \"\n");
    assert_eq!(pairs(&keys), [("groq".to_owned(), "gsk-a".to_owned())]);
    assert_eq!(
        keys.skipped().collect::<Vec<_>>(),
        ["DEBUG", "OPENAI_API_KEY", "EXA_API_KEY"]
    );
    assert!(parse("DEBUG=1").is_empty());
    let custom = env_file::parse(
        "HF_TOKEN=hf_a\nOPENAI_API_KEY=sk-a",
        &EnvMapping::empty().map("huggingface", "hf_token"),
    )
    .unwrap();
    assert_eq!(
        pairs(&custom),
        [("huggingface".to_owned(), "hf_a".to_owned())]
    );
}
